"""What the edge runtime, the coordinator and the model exporter agree on: the one shared kernel.

`model/`, `edge_runtime/` and `coordinator/` each import `protocol` and none of the other two,
and `protocol` imports none of them (tests/protocol/test_import_graph.py), so a device needs
`protocol/` + `edge_runtime/` only and a change to the shared contract has one obvious room.

Imports nothing heavier than numpy, safetensors and cryptography at module level: no
TensorFlow, Flask or SQLAlchemy, so it installs on a device from the slim edge requirements.
SentencePiece (`text.load_tokenizer`) and the TFLite interpreter (`interpreter.Model`) are
imported only when used, so the coordinator never needs either.
"""

__version__ = "0.1.0"      # the one place; pyproject.toml reads it

"""Builds FedKeys model artifacts: tokenizer, LSTM next-token model, TFLite export.

Stands on `protocol` alone (the architecture record, the text units, the interpreter adapter
the export lint runs in); nothing in `edge_runtime` or `coordinator` imports it, so a device
never runs it (the one distribution installs its files everywhere; its TensorFlow comes only
with the `full` extra). Only `model.lstm`, `model.export` and `model.pretrain` import TensorFlow;
`model.corpus` and `model.tokenizer` do not, so tools and tests can use them without it.
"""

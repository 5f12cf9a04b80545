"""What the edge runtime, the coordinator and the model exporter agree on.

Imports nothing heavier than numpy, safetensors and cryptography: no TensorFlow, Flask or
SQLAlchemy, so it installs on a device from the slim edge requirements.
"""

__version__ = "0.1.0"      # the one place; pyproject.toml reads it

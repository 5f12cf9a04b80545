"""What the edge runtime, the coordinator and the model exporter agree on.

Imports nothing heavier than numpy, safetensors and cryptography: no TensorFlow, Flask or
SQLAlchemy, so it installs on a device from the slim edge requirements.
"""

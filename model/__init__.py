"""Builds FedKeys model artifacts: tokenizer, LSTM next-token model, TFLite export.

Only `model.lstm`, `model.export` and `model.pretrain` import TensorFlow; `model.config`,
`model.corpus` and `model.tokenizer` do not, so tools and tests can use them without it.
"""

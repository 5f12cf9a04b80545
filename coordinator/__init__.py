"""FedKeys coordinator: enrollment, rounds, streaming federated averaging, canary rollout.

Never imports TensorFlow and never sees text: weight vectors, metrics and metadata only.
"""

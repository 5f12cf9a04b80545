"""The FedKeys edge runtime: what runs on a phone-class device or an ARM board.

Never imports TensorFlow: it runs from requirements-edge.txt alone.
"""

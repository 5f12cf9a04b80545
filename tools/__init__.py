"""FedKeys command line: prepare, pretrain, evaluate, simulate, benchmark, demo."""

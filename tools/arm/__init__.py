"""The edge runtime on an emulated Raspberry Pi 4: see `python -m tools.arm --help`."""

"""`python -m tools.simulate`."""

from tools.simulate.cli import cli

if __name__ == "__main__":
    cli()

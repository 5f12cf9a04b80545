"""What every FedKeys command line shares, deployables and tools alike: the version flag and a
help formatter that shows defaults (argparse's own prints "(default: None)" on every optional flag)."""

from __future__ import annotations

import argparse

from protocol import __version__

EXIT_USER_ERROR = 2      # bad input or setting: one line on stderr, as argparse does for bad flags


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends "(default: X)" where a flag has a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS, []):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

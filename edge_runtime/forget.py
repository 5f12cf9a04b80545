"""Delete what the device learned from its text and keeps on disk.

Every wipe path calls `forget_learned`: the `wipe` command, the wipe in place of a damaged cache,
the keyboard page's Clear, and the keyboard noticing a wipe made elsewhere. A new kind of file
learned from the text is added here once, not at each path (an update missed at one of three
call sites is how the charged update first survived a wipe).
"""

from __future__ import annotations

import os

from edge_runtime import personal_copy, unsent


def forget_learned(data_dir: str | os.PathLike) -> None:
    """The personal LSTM and an update charged and not yet delivered: both learned from the text."""
    personal_copy.forget(data_dir)
    unsent.discard(data_dir)

"""The keyboard's base n-gram: a Kneser-Ney word trigram fitted on proxy text only.

Why: an n-gram and an LSTM make different mistakes, and a mixture of the two beats either
(the issue's measurements, and Gboard's own FST decoder). Fitted on the same public proxy
text as version 0, it ships with the keyboard app like a dictionary, once, not with every
model version: federated rounds change the LSTM's weights, never this file. It is built by
`make v0` (`python -m tools.proxy_ngram`) into models/ngram/.

`FEDKEYS_BASE_NGRAM` names another file; an empty value turns the component off. A missing
or damaged file is not an error: the keyboard then mixes the LSTM with the user's own words
only, and says so in its log.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from edge_runtime.collector import settle
from edge_runtime.ngram import KneserNeyLM

log = logging.getLogger(__name__)

FILENAME = "proxy_trigram.npz"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "models" / "ngram" / FILENAME


def configured_path() -> Path | None:
    value = os.environ.get("FEDKEYS_BASE_NGRAM")
    if value is None:
        return DEFAULT_PATH
    return Path(value) if value else None


@functools.lru_cache(maxsize=2)
def _load(path: Path) -> KneserNeyLM | None:
    if not path.is_file():
        log.warning("base n-gram %s not found: suggestions use the LSTM and the user's own words only", path)
        return None
    try:
        lm = KneserNeyLM.load(path)
    except ValueError as e:
        log.warning("%s: suggestions use the LSTM and the user's own words only", e)
        return None
    settle()   # its millions of entries are loaded once and kept: out of the collector's walks
    return lm


def load_base_ngram(path: Path | None = None) -> KneserNeyLM | None:
    """The base n-gram (loaded once per process), or None when there is none."""
    path = configured_path() if path is None else path
    return None if path is None else _load(path.resolve())

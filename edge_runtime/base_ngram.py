"""The keyboard's base n-gram: a Kneser-Ney word trigram fitted on proxy text only.

Why: an n-gram and an LSTM make different mistakes, and a mixture of the two beats either
(the issue's measurements, and Gboard's own FST decoder). Fitted on the same public proxy
text as version 0, it ships with the keyboard app like a dictionary, once, not with every
model version: federated rounds change the LSTM's weights, never this file. It is built by
`make v0` (`python -m tools.proxy_ngram`) into this package's data folder, so a device installed
with `pip install ".[edge]"` has it (releases before 6 December 2026 kept it in the checkout's
models/ngram/, and an installed device had to be pointed at it; that path is now a link here).

The device's `base_ngram` setting (`EdgeConfig`; the tools' `--base-ngram`) names another file,
or `off`; empty is the shipped file. A missing or damaged file is not an error: the keyboard then
mixes the LSTM with the user's own words only, and says so in its log.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from edge_runtime.collector import settle
from edge_runtime.ngram import KneserNeyLM

log = logging.getLogger(__name__)

FILENAME = "proxy_trigram.npz"
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / FILENAME
OFF = "off"


OLD_VARIABLE = "FEDKEYS_BASE_NGRAM"


def refuse_old_variable(environ: Mapping[str, str] | None = None) -> None:
    """Releases up to 5 December 2026 named the file by FEDKEYS_BASE_NGRAM, outside the device's
    settings. A tool refuses it, naming what replaces it (its --base-ngram); a device reads it as
    its setting, with a warning (`edge_runtime.config.load_config`): the unit file those releases
    shipped sets it, and a refusal would have systemd restart every upgraded device every 30 s."""
    if OLD_VARIABLE in (os.environ if environ is None else environ):
        raise ValueError(f"{OLD_VARIABLE} is no longer read: the base n-gram is the device setting base_ngram "
                         f"now (FEDKEYS_EDGE_BASE_NGRAM=FILE, or off for none; the tools' --base-ngram)")


def resolve(setting: str = "") -> Path | None:
    """The file a `base_ngram` setting names: empty is the shipped file, `off` none."""
    if not setting:
        return DEFAULT_PATH
    return None if setting == OFF else Path(setting).expanduser()


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


def load_base_ngram(setting: str = "") -> KneserNeyLM | None:
    """The base n-gram a `base_ngram` setting names (loaded once per process), or None when there is none."""
    path = resolve(setting)
    return None if path is None else _load(path.resolve())

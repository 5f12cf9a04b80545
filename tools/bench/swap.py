"""`python -m tools.bench swap`: keystroke latency while new model versions arrive.

The device loop installs a new version after every promoted round. Loaded on the first keystroke
that sees it, under the lock every strip takes, it makes that keystroke wait for the whole load
(0.2-1 s spikes in a soak), as keyboards of releases before 6 December 2026 did. The keyboard loads
it on a thread (`ModelSlot.refresh(wait=False)`) and answers from the version in use meanwhile. Both
ways run here side by side, in turn, in one process: a keyboard (`KeyboardApp`, as the server
runs it, with its idle thread) on a data directory, typed into at a steady pace, a message that
grows from half of `--chars` characters to all of them and starts again, while `--versions` copies of the model are
installed one every `--interval` seconds, as the device loop installs them. The thread that
loads a version also feeds the text being typed through it before it goes in, so the keystroke
after the swap does not.

    python -m tools.bench swap --model models/v0 [--versions 6] [--interval 3] [--chars 2000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tools._cli import BASE_NGRAM_HELP, base_ngram_arg

TEXT = "the quick brown fox jumps over the lazy dog and then it goes home to sleep "
KEY_GAP_S = 0.01          # a fast typist: about 100 keystrokes a second
SLOW_MS = 50.0            # a keystroke slower than this shows as a stall


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("swap", help="keystroke latency while new versions arrive: load on the keystroke vs "
                                    "on a thread", description=__doc__.split("\n\n")[1])
    s.add_argument("--model", required=True, help="model version directory")
    s.add_argument("--versions", type=int, default=6, help="new versions installed per way (at least 1)")
    s.add_argument("--interval", type=float, default=3.0, help="seconds between two installs (above 0)")
    s.add_argument("--chars", type=int, default=2000,
                   help="characters the typed message grows to, from half of them (at least 2)")
    s.add_argument("--base-ngram", default="", metavar="FILE", type=base_ngram_arg, help=BASE_NGRAM_HELP)


def _copy(src: Path, dst: Path, version_id: str) -> Path:
    """The version's files under another id (its manifest unsigned: the bench's store has no key)."""
    from protocol.artifact import MANIFEST

    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**manifest, "version_id": version_id, "signature": None}))
    return dst


def run_way(model: Path, work: Path, *, in_place: bool, versions: int, interval: float, chars: int,
            base_ngram: str) -> dict[str, float]:
    """Type while `versions` new versions arrive; keystroke latencies in ms, after the first (which
    loads the first version in place either way, as the server does before it listens)."""
    from edge_runtime.cache import TextCache
    from edge_runtime.idle_worker import IdleWorker
    from edge_runtime.keyboard_app import KeyboardApp
    from edge_runtime.model_slot import MODEL_CHECK_S, ModelSlot, load_predictor
    from edge_runtime.versions import VersionStore, directory_fetch

    class LoadInPlace(ModelSlot):   # the load on the keystroke, as before 6 December 2026
        def refresh(self, *, wait: bool = True) -> None:
            super().refresh(wait=True)

    message, half = (TEXT * (chars // len(TEXT) + 1))[:chars], chars // 2

    data = work / ("in-place" if in_place else "thread")
    ids = [f"bench-{i}" for i in range(versions + 1)]
    copies = [_copy(model, work / f"{data.name}-{vid}", vid) for vid in ids]
    VersionStore(data).install(ids[0], directory_fetch(copies[0]))
    slot = (LoadInPlace if in_place else ModelSlot)(
        data_dir=data, model_dir=None, channel=None,
        loader=lambda d, *w: load_predictor(d, *w, base_ngram=base_ngram))
    cache = TextCache(data)
    app = KeyboardApp(cache=cache, slot=slot)
    idle = IdleWorker(app.prefetch)   # as the keyboard server runs it: after each strip
    done = threading.Event()

    def device_loop() -> None:
        for vid, path in zip(ids[1:], copies[1:], strict=True):
            time.sleep(interval)
            VersionStore(data).install(vid, directory_fetch(path))
        time.sleep(interval + MODEL_CHECK_S)   # the last one is looked up too
        done.set()

    times, seen, i = [], set(), 0
    installer = threading.Thread(target=device_loop, daemon=True)
    installer.start()
    try:
        while not done.is_set():
            i += 1
            t0 = time.perf_counter()
            typed = message[: half + i % (chars - half)]   # from half the message on: long while versions arrive
            seen.add(app.suggest({"client": "bench", "text": typed})["version_id"])
            times.append((time.perf_counter() - t0) * 1000)
            idle.submit("bench")
            time.sleep(KEY_GAP_S)
    finally:
        installer.join()
        idle.stop()
        cache.close()
    ms = np.array(times[1:])
    return {"keystrokes": len(ms), "versions": len(seen), "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "slow": int((ms > SLOW_MS).sum())}


def main(args: argparse.Namespace) -> int:
    from protocol.artifact import read_manifest

    if args.versions < 1 or not 0 < args.interval <= 3600 or args.chars < 2:   # (inf hung after a traceback)
        raise ValueError("--versions must be at least 1, --chars at least 2 and --interval in (0, 3600]")
    model = Path(args.model)
    read_manifest(model)   # a missing or broken version says so before anything runs
    with tempfile.TemporaryDirectory(prefix="fedkeys-bench-swap-") as tmp:
        rows = {}
        for name, in_place in (("load on the keystroke (before)", True), ("load on a thread (ships)", False)):
            rows[name] = run_way(model, Path(tmp), in_place=in_place, versions=args.versions,
                                 interval=args.interval, chars=args.chars, base_ngram=args.base_ngram)
    print(f"{args.versions} new versions, one every {args.interval:g} s, while a message of {args.chars // 2:,} "
          f"to {args.chars:,} characters is typed at about {1 / KEY_GAP_S:.0f} keystrokes a second")
    print(f"{'':34}{'keystrokes':>11}{'versions':>9}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>9}  over {SLOW_MS:g} ms")
    for name, r in rows.items():
        print(f"{name:34}{r['keystrokes']:>11}{r['versions']:>9}{r['p50']:>8.2f}{r['p99']:>8.1f}{r['max']:>9.1f}"
              f"  {r['slow']}")
    before, now = rows.values()
    # The stalls are one keystroke per version, too few to move p99 at this pace: the slowest
    # keystroke is the number that shows them.
    print(f"ratio before/ships, slowest keystroke: {before['max'] / now['max']:.1f}x")
    return 0

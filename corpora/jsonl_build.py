"""What the check-corpus builders (`build_nps_chat.py`, `build_cornell_movies.py`) share: their
command line of two optional paths, and a JSONL write that leaves either the whole file or none.
Standard library only; the builders import it as their sibling when run by path."""
import contextlib
import json
import os
import sys
from collections.abc import Iterable


def paths(usage: str, src: str, out: str) -> tuple[str, str] | None:
    """(SOURCE, OUT) from the command line, `src` and `out` when not given; None once `usage` is
    printed for -h/--help; more than two arguments exit with `usage`."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return None
    if len(args) > 2:
        sys.exit(usage)
    return (args[0] if args else src), (args[1] if len(args) > 1 else out)


def write_jsonl(records: Iterable[dict], out: str) -> None:
    """Write the records to a temporary file and rename it into place, so a failure leaves no
    half file; a write that fails exits with what went wrong."""
    tmp = f"{out}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        sys.exit(f"cannot write {out}: {e}")

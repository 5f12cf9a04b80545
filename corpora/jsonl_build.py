"""What the check-corpus builders (`build_nps_chat.py`, `build_cornell_movies.py`,
`build_git_commits.py`) share: their command line of two optional paths and its summary, and a
JSONL write that leaves either the whole file or none.
Standard library only; the builders import it as their sibling when run by path."""
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator


def run(usage: str, src: str, out: str, build: Callable[[str, str], tuple[int, int]],
        units: tuple[str, str]) -> None:
    """A builder's command line: SOURCE and OUT, `src` and `out` when not given, then
    `build(SOURCE, OUT)` -> (records, users), printed with their `units` ("lines", "characters").
    -h/--help prints `usage`; more than two arguments exit with it."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return
    if len(args) > 2:
        sys.exit(usage)
    src, out = (args[0] if args else src), (args[1] if len(args) > 1 else out)
    records, users = build(src, out)
    print(f"{out}: {records} {units[0]}, {users} {units[1]}")


def check_source(doc: str, src: str | os.PathLike | None) -> None:
    """For the vendored corpora's builders: -h/--help prints the builder's docstring, and a source
    that is not there exits with one line, before anything is written (a mistyped path left an
    empty vendored corpus, with exit 0)."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(doc)
        sys.exit(0)
    if src is not None and not os.path.exists(src):
        sys.exit(f"no such source: {src} (see --help)")


@contextlib.contextmanager
def replaced(out: str | os.PathLike) -> Iterator:
    """A text file written beside `out` and renamed over it when complete: a failure leaves the
    old file."""
    tmp = f"{out}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def write_records(records: list[dict], out: str, none_found: str) -> tuple[int, int]:
    """`records` ({"user", "text"}) written to `out` (`write_jsonl`), or exit with `none_found`
    before anything is written; (records, users) for `run`'s summary."""
    if not records:
        sys.exit(none_found)
    write_jsonl(records, out)
    return len(records), len({r["user"] for r in records})

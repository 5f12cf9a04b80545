"""`python -m tools`: the commands this package holds, each run as `python -m tools.NAME`.

`python -m tools` is what a newcomer tries first, so it lists the commands rather than fail with
"No module named tools.__main__". The list is
read from the files themselves (the modules that run as a command, and each one's docstring), so
it cannot drift from them, and nothing is imported: TensorFlow stays unloaded.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

HERE = Path(__file__).parent


def commands() -> dict[str, str]:
    """{name: the first line of its docstring} for every module or package here that runs as a command."""
    found = {}
    for path in sorted(HERE.iterdir()):
        if path.name.startswith("_"):
            continue
        if path.is_dir() and (path / "__main__.py").is_file():
            source = path / "__init__.py" if (path / "__init__.py").is_file() else path / "__main__.py"
        elif path.suffix == ".py" and '__name__ == "__main__"' in path.read_text(encoding="utf-8"):
            source = path
        else:
            continue
        doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
        found[path.stem] = " ".join(doc.split("\n\n")[0].split()).split(": see")[0]
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:   # every command has it, this one too
        from protocol import __version__
        print(f"python -m tools {__version__}")
        return 0
    listing = commands()
    width = max(map(len, listing))
    print("usage: python -m tools.NAME [--help]   (installed: fedkeys-prepare, -pretrain, -evaluate, -simulate)\n")
    print("commands:")
    for name, what in listing.items():
        print(f"  {name:<{width}}  {what}")
    if args and args[0] not in ("-h", "--help"):
        print(f"\nerror: run a command as python -m tools.{args[0]} (there is no `python -m tools {args[0]}`)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

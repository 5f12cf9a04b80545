"""The layering of the deployables: `protocol/` is the one shared kernel, nothing imports upward.

    model/   edge_runtime/   coordinator/    each imports protocol/ and none of the other two
    ---------------------------------------
                 protocol/                   imports none of the three

So a device install needs `protocol/` + `edge_runtime/` only, the exporter's lint runs the
device's interpreter adapter without importing the device, and the coordinator never pulls
in TensorFlow or the keyboard. Every import counts, including those inside functions (a lazy
import is still a dependency, only a later one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "model", "edge_runtime", "coordinator")
# package -> first-party packages it must not import
FORBIDDEN = {
    "protocol": {"model", "edge_runtime", "coordinator"},
    "model": {"edge_runtime", "coordinator"},
    "edge_runtime": {"model", "coordinator"},
    "coordinator": {"model", "edge_runtime"},
}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module `path` imports, anywhere in the file."""
    package = list(path.relative_to(root).parts[:-1])   # the package a relative import starts from
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[: len(package) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
    return out


def violations(package: str, root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for name in sorted(imported_modules(path, root)):
            if name.split(".")[0] in FORBIDDEN[package]:
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_downward(package):
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == []


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    (tmp_path / "protocol" / "sub").mkdir(parents=True)
    probe = tmp_path / "protocol" / "sub" / "probe.py"
    probe.write_text("import numpy\n\ndef f():\n    from edge_runtime import agent\n    from .. import wire\n"
                     "    from . import x\n")
    assert imported_modules(probe, tmp_path) == {"numpy", "edge_runtime", "protocol", "protocol.sub"}
    assert violations("protocol", tmp_path) == ["protocol/sub/probe.py imports edge_runtime"]

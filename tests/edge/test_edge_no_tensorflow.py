"""The edge runtime must run from requirements-edge.txt alone: no TensorFlow, Flask or SQLAlchemy,
and from `protocol/` + `edge_runtime/` alone of this repository's packages.

Two checks: a static one (every `import` reachable from edge_runtime through first-party
modules, read with ast) and a dynamic one (import every edge module in a fresh interpreter
in which the forbidden packages cannot be imported at all).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"tensorflow", "tf_keras", "keras", "flask", "sqlalchemy", "alembic", "werkzeug", "flwr"}
NOT_ON_DEVICE = {"model", "coordinator", "tools"}   # first-party packages a device does not need
FORBIDDEN |= NOT_ON_DEVICE
FIRST_PARTY = {"edge_runtime", "protocol"}


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def imports_of(path: Path, package: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return out


def edge_modules() -> list[str]:
    return sorted(f"edge_runtime.{p.stem}" if p.stem != "__init__" else "edge_runtime"
                  for p in (ROOT / "edge_runtime").rglob("*.py"))


def test_no_edge_module_reaches_a_forbidden_import():
    seen: set[str] = set()
    todo = edge_modules()
    offenders: list[str] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imp in imports_of(path, package):
            top = imp.split(".")[0]
            if top in FORBIDDEN:
                offenders.append(f"{name} imports {imp}")
            elif top in FIRST_PARTY:
                todo.append(imp)
    assert not offenders, offenders
    assert "edge_runtime.cache" in seen and "protocol.artifact" in seen


def test_edge_modules_import_with_forbidden_packages_blocked():
    code = textwrap.dedent(f"""
        import importlib, sys
        sys.path.insert(0, {str(ROOT)!r})
        FORBIDDEN = {sorted(FORBIDDEN)!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        for m in {edge_modules()!r}:
            importlib.import_module(m)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
        assert not loaded, loaded
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_edge_requirements_are_slim():
    reqs = (ROOT / "requirements-edge.txt").read_text().lower()
    names = {line.split("=")[0].split(">")[0].split("<")[0].strip()
             for line in reqs.splitlines() if line.strip() and not line.startswith("#")}
    assert not names & (FORBIDDEN | {"tensorflow-cpu", "flask-sqlalchemy", "tflite-model-maker"}), names


def _loaded_by(imports: str, modules: set[str]) -> list[str]:
    """Which of `modules` a fresh interpreter holds after `import {imports}`."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        import {imports}
        print(json.dumps(sorted(set({sorted(modules)!r}) & set(sys.modules))))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_keyboard_does_not_load_the_device_loop():
    """The keyboard process (`python -m edge_runtime keyboard`) suggests and caches only: the device
    loop, its HTTP client and the trainer cost it 12 MiB of imports for nothing (README, memory)."""
    loop = {"requests", "edge_runtime.agent", "edge_runtime.client", "edge_runtime.trainer",
            "edge_runtime.secagg_client", "edge_runtime.personalize"}
    assert _loaded_by("edge_runtime.keyboard, edge_runtime.__main__", loop) == []


def test_the_cache_commands_do_not_load_the_keyboard():
    """`pause`, `resume`, `wipe` and `type` read and write the cache only: the keyboard's predictor,
    model slot and server were imported for them too, about 150 ms of a 420 ms start on a desktop
    core (several times that on a Pi)."""
    keyboard = {"edge_runtime.keyboard", "edge_runtime.keyboard_app", "edge_runtime.model_slot",
                "edge_runtime.predictor", "edge_runtime.session"}
    assert _loaded_by("edge_runtime.__main__", keyboard) == []

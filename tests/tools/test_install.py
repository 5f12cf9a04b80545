"""`pip install .` / `pip install ".[edge]"` give working console scripts, and the slim install
declares no TensorFlow. Kept fast: the wheel is built without build isolation, installed with
--no-deps into fresh virtual environments, and the dependencies come from this test's own
environment through a .pth file (.ci/run installs ".[edge]" from the index for real and checks
TensorFlow is not importable there)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = {".git", "data", "build", "corpora", "models", "tests", "docs", "deploy", "__pycache__"}


def _run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_wheel_installs_with_console_scripts_and_a_slim_base(tmp_path):
    src = tmp_path / "src"
    # Top-level folders only: a package's own data folder (protocol/data) ships in the wheel.
    shutil.copytree(REPO, src, ignore=lambda d, names: [n for n in names if (n in SKIP and Path(d) == REPO)
                                                          or n in ("__pycache__", ".git") or n.startswith(".venv")
                                                          or n.endswith(".egg-info")])
    r = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
             str(tmp_path / "dist"), str(src), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fedkeys-*.whl")
    deps_site = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("FEDKEYS_")}
    for spec in (str(wheel), f"{wheel}[edge]"):
        venv = tmp_path / ("venv-edge" if spec.endswith("]") else "venv")
        assert _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path).returncode == 0
        py = venv / "bin" / "python"
        r = _run(sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", spec, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        site = Path(_run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                         cwd=tmp_path).stdout.strip())
        (site / "zz_deps.pth").write_text(deps_site + "\n")       # after the package itself on sys.path

        where = _run(str(py), "-c", "import coordinator, edge_runtime; print(edge_runtime.__file__)", cwd=tmp_path,
                     env=env)
        assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr
        installed = Path(where.stdout.strip()).parents[1]
        # the annotations are the package's (py.typed), and models/ (the shipped version) is no package
        assert all((installed / p / "py.typed").is_file() for p in ("protocol", "edge_runtime", "coordinator"))
        assert not (installed / "models").exists()
        # page assets, the base n-gram, the block list
        for folder in ("edge_runtime/static", "edge_runtime/data", "coordinator/static", "protocol/data"):
            shipped = sorted(p.relative_to(REPO) for p in (REPO / folder).rglob("*") if p.is_file())
            assert shipped and [p for p in shipped if not (installed / p).is_file()] == [], folder
        # The keyboard's base n-gram is the installed one by default: it was a file of the checkout,
        # and an installed device suggested without it unless pointed at that file.
        ng = _run(str(py), "-c", "from edge_runtime.base_ngram import resolve; print(resolve(''))",
                  cwd=tmp_path, env=env)
        assert ng.stdout.strip() == str(installed / "edge_runtime/data/proxy_trigram.npz"), ng.stdout + ng.stderr
        b = _run(str(py), "-c", "from protocol.text import is_blocked; print(is_blocked('Fuck'))",
                 cwd=tmp_path, env=env)
        assert b.stdout.strip() == "True", b.stdout + b.stderr
        for script in ("fedkeys-device", "fedkeys-coordinator", "fedkeys-pretrain", "fedkeys-evaluate",
                       "fedkeys-simulate", "fedkeys-prepare"):
            h = _run(str(venv / "bin" / script), "--help", cwd=tmp_path, env=env)
            assert h.returncode == 0 and "usage:" in h.stdout, (script, h.stderr[-2000:])
        v = _run(str(venv / "bin" / "fedkeys-device"), "--version", cwd=tmp_path, env=env)
        assert v.returncode == 0 and v.stdout.split()[-1] == "0.1.0", v.stdout
        # The coordinator runs from the installed package (its migrations ship in the wheel).
        init = _run(str(venv / "bin" / "fedkeys-coordinator"), "init", "--data-dir", str(venv / "coord"),
                    cwd=tmp_path, env=env)
        assert init.returncode == 0, init.stderr[-2000:]

    reqs = _run(str(tmp_path / "venv" / "bin" / "python"), "-c",
                "import importlib.metadata as m; print('\\n'.join(m.requires('fedkeys')))", cwd=tmp_path).stdout
    base = [r for r in reqs.splitlines() if "extra ==" not in r]
    edge = [r for r in reqs.splitlines() if "extra == \"edge\"" in r]
    full = [r for r in reqs.splitlines() if "extra == \"full\"" in r]
    assert base and not [r for r in base + edge if "tensorflow" in r or "pytest" in r], base + edge
    assert any(r.startswith("ai-edge-litert") for r in base)
    assert any(r.startswith("tensorflow-cpu") for r in full)
    assert "pytest" not in (REPO / "requirements-edge.txt").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def test_package_dependencies_match_the_requirements_files():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def reqs(name: str) -> set[str]:
        lines = (REPO / name).read_text().splitlines()
        return {ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip() and not ln.startswith("-r")}

    assert set(project["dependencies"]) == reqs("requirements-edge.txt")
    assert set(project["optional-dependencies"]["coordinator"]) <= reqs("requirements.txt")
    full = set(project["optional-dependencies"]["full"]) - {"fedkeys[coordinator]"}
    assert full <= reqs("requirements.txt")

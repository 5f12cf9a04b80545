"""A clone from a code host has no ../shared: the corpora, the test fixtures, the tools' defaults
and the demo's first steps must work from the repository alone; the shipped version 0 is
checked against its manifest before anything uses it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ("model", "edge_runtime", "coordinator", "protocol", "tools", "tests", "deploy")


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")}
    return {**env, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=root, env=_env(root), capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_nothing_reads_a_sibling_shared_folder():
    offenders = []
    for d in PRODUCT_DIRS + ("Makefile", ".ci"):
        base = REPO / d
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file() and p.suffix in
                                               (".py", ".sh", "", ".yml", ".yaml", ".service", ".conf")]
        for p in files:
            if p.resolve() == Path(__file__).resolve() or "__pycache__" in p.parts:
                continue
            text = p.read_text(errors="replace")
            if "../shared" in text or "FEDKEYS_SHARED" in text or 'parent / "shared"' in text:
                offenders.append(str(p.relative_to(REPO)))
    assert not offenders, offenders


def test_a_clone_without_shared_builds_fixtures_and_starts_the_demo(tmp_path):
    # The clone sits in a folder with no sibling shared/ (as on a code host's checkout).
    clone = tmp_path / "host" / "fedkeys"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=300)
    assert not (clone.parent / "shared").exists()
    for name in ("shakespeare.jsonl", "sotu.jsonl", "sotu.LICENSE", "README.md"):
        assert (clone / "corpora" / name).is_file(), name
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=clone / "corpora", capture_output=True,
                          text=True, check=False)
    assert sums.returncode == 0, sums.stdout + sums.stderr

    # make test's fixture: the tiny version, from the clone's own corpus.
    built = _run(clone, "-m", "tests.tiny_version", str(tmp_path / "tiny"))
    assert built.returncode == 0, built.stderr[-2000:]
    assert (tmp_path / "tiny" / "manifest.json").is_file()

    # `make v0` with its pinned seed, on a tiny schedule here (the shipped one takes minutes), builds
    # models/v0 beside any old one and swaps it in. -o: never (re)install this test's virtualenv.
    venv = Path(sys.executable).parent.parent
    tiny = ("--proxy corpora/sotu.jsonl --seed 0 --epochs 1 --steps-per-epoch 3 --batch-size 8 --vocab-size 300 "
            "--embed-dim 8 --hidden-dim 16 --seq-len 8 --version-id v0")
    chat = "--proxy corpora/topical_chat.jsonl --seed 1 --epochs 1 --steps-per-epoch 2 --batch-size 8 --version-id v0"
    made = subprocess.run(["make", "-o", f"{venv}/.installed", "v0", f"VENV={venv}", f"V0_ARGS={tiny}",
                           f"V0_CHAT_ARGS={chat}"], cwd=clone,
                          env=_env(clone), capture_output=True, text=True, timeout=900, check=False)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    assert "--seed 0" in made.stdout and (clone / "models" / "v0" / "manifest.json").is_file()
    assert not any((clone / "models" / f"v0.{part}").exists() for part in ("new", "stage1", "stage2"))
    # The second stage continues the same version: no parent, the first stage's record kept.
    manifest = json.loads((clone / "models" / "v0" / "manifest.json").read_text())
    assert manifest["parent"] is None and manifest["metrics"]["source"] == "topical_chat.jsonl"
    assert [s["source"] for s in manifest["metrics"]["earlier_stages"]] == ["sotu.jsonl"]
    # Then its word list's tail took present-day words from the vendored frequency list.
    assert manifest["metrics"]["tail_words"]["added"] > 1000

    # The tools' defaults point into the clone.
    helped = _run(clone, "-m", "tools.demo", "--help")
    assert str(clone / "corpora" / "shakespeare.jsonl") in helped.stdout.replace("\n", "").replace(" ", ""), \
        helped.stdout

    # The demo's first steps on the clone's models/v0 (here: the tiny one `make v0` just built), one round,
    # with TensorFlow made unimportable in every process it starts (its environment does not have it).
    blocker = tmp_path / "no-tf" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('TensorFlow is not in the demo environment')\n")
    no_tf = _env(clone) | {"PYTHONPATH": f"{blocker.parent}{os.pathsep}{clone}"}
    demo = subprocess.run([sys.executable, "-m", "tools.demo", "--data-dir", str(tmp_path / "demo"), "--devices", "2",
                           "--rounds", "1", "--max-words", "40", "--workers", "1", "--no-serve", "--no-progress"],
                          cwd=clone, env=no_tf, capture_output=True, text=True, timeout=600, check=False)
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "../shared" not in out and "no such file" not in out
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "shakespeare.jsonl" in report and "| LSTM, federated with DP noise (σ=0.01" in report
    # What does need TensorFlow says so, in one line, before any work.
    central = subprocess.run([sys.executable, "-m", "tools.demo", "--with-central", "--no-serve"], cwd=clone,
                             env=no_tf, capture_output=True, text=True, timeout=120, check=False)
    assert central.returncode == 2 and len(central.stderr.strip().splitlines()) == 1, central.stderr
    assert "make setup" in central.stderr


def test_shipped_version_that_does_not_match_its_manifest_is_refused(tmp_path, exported_version):
    v0 = tmp_path / "v0"
    shutil.copytree(exported_version, v0)
    with open(v0 / "weights.safetensors", "r+b") as f:     # one flipped byte at the end of the weights
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    r = _run(REPO, "-m", "tools.simulate", "--v0", str(v0), "--devices", "2", "--rounds", "1",
             "--data-dir", str(tmp_path / "sim"), "--no-central", "--no-progress", timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not match its manifest" in lines[0] and "sha256 mismatch" in lines[0], lines
    assert "write it again" in lines[0] and "git checkout" not in lines[0]   # the user's folder, not models/v0
    assert not (tmp_path / "sim" / "runs").exists()        # refused before any coordinator started


def test_missing_shipped_version_says_how_to_make_it(tmp_path, monkeypatch):
    from protocol.artifact import ArtifactError
    from tools import shipped

    monkeypatch.setattr(shipped, "SHIPPED_V0", tmp_path / "models" / "v0")   # the checkout's folder, gone
    try:
        shipped.check_version(tmp_path / "models" / "v0")
    except ArtifactError as e:
        assert "make v0" in str(e) and "missing" in str(e)
    else:
        raise AssertionError("a missing version 0 was accepted")


def test_a_broken_version_of_the_users_own_is_not_sent_to_git(tmp_path):
    """`--v0 DIR` names the user's folder: restoring models/v0 from git would not mend it."""
    from protocol.artifact import ArtifactError
    from tools.shipped import check_version

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "manifest.json").write_text("{}")
    try:
        check_version(tmp_path / "mine")
    except ArtifactError as e:
        assert "git checkout" not in str(e) and "make v0" not in str(e) and "write it again" in str(e), e
    else:
        raise AssertionError("a broken version was accepted")


def test_pretrain_without_a_corpus_refuses_instead_of_a_long_default_run(tmp_path):
    r = _run(REPO, "-m", "tools.pretrain", "--out", str(tmp_path / "v0"), timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--proxy" in r.stderr and not (tmp_path / "v0").exists()

"""tools.arm's pure parts (the board itself needs root and runs in CI via `python -m tools.arm ci`)."""

from __future__ import annotations

import os

import pytest

from tools.arm import board
from tools.arm.__main__ import main
from tools.arm.tasks import TEST_PATHS, _parse_bench, _task_lines


def test_tflite_venv_swaps_the_interpreter_and_pins_numpy_below_2():
    litert = board.venv_requirements("litert")
    tflite = board.venv_requirements("tflite")
    assert "ai-edge-litert" in litert and "tflite-runtime" not in litert
    assert "tflite-runtime==2.14.0" in tflite and "ai-edge-litert" not in tflite
    assert "numpy<2" in tflite.splitlines()
    for pkg in ("sentencepiece", "safetensors", "cryptography", "requests", "pytest"):
        assert pkg in litert and pkg in tflite
    reqs = [ln for ln in (litert + tflite).lower().splitlines() if ln.strip() and not ln.startswith("#")]
    assert not [ln for ln in reqs if "tensorflow" in ln]


def test_cpuinfo_looks_like_a_raspberry_pi_4():
    text = board.cpuinfo_text(4)
    assert text.count("processor\t:") == 4
    assert "CPU part\t: 0xd08" in text and "CPU implementer\t: 0x41" in text     # Cortex-A72
    assert "Raspberry Pi 4" in text


def test_task_summary_and_bench_parsing():
    out = ("2026 INFO edge_runtime.agent: task train: uploaded round=1 steps=7 examples=28; model v0\n"
           "x task evaluate: reported tokens=25\n")
    assert [t[:2] for t in _task_lines(out)] == [("train", "uploaded"), ("evaluate", "reported")]
    bench = ("wall clock:\nincremental, prefetch between keys (the keyboard)      100    9.000    9.000    9.000\n"
             "thread CPU time:\n"
             "incremental, prefetch between keys (the keyboard)      100    1.579    4.189    1.343\n"
             "  idle work between keystrokes, in all (prefetch)     100    2.101    5.002    2.300\n"
             "incremental, all work on the keystroke                 100   14.579   45.189   15.343\n"
             "recompute (new session, <= 20 words)                    10   35.705  194.603   55.976\n"
             "ratio recompute/incremental (same keys), prefetch between keys: p50 30.1x, p99 41.2x, mean 33.0x\n")
    # the ratio is the bench's own, on the same keystrokes (194.603 / 4.189 over different keys: 46.5x)
    assert _parse_bench(bench) == {"incremental": (1.579, 4.189, 1.343), "all_work": (14.579, 45.189, 15.343),
                                   "recompute": (35.705, 194.603, 55.976), "ratio": (0.0, 41.2, 0.0)}


def test_test_subset_paths_exist():
    for p in TEST_PATHS:
        assert os.path.exists(os.path.join(board.REPO, p)), p


def test_refuses_politely_without_root(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # CI runs as root: pretend to be a user
    assert main(["--cache-dir", str(tmp_path), "build"]) == 1
    assert "needs root" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["e2e", "--native", "0"], ["e2e", "--native", "-1"],
                                  ["bench", "--max-keystrokes", "0"]])
def test_counts_below_one_are_refused_before_any_work(tmp_path, capsys, args):
    """`e2e --native -1` built a model with TensorFlow, then failed at the coordinator's init."""
    with pytest.raises(SystemExit) as e:
        main(["--cache-dir", str(tmp_path), *args])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

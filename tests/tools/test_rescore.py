"""tools.rescore finds the run's parts as the simulation chose them, and refuses what it cannot pair.
(Its scoring is run end to end in test_simulate.py on a finished simulation.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tools.rescore import _run_parts, main


def _run_dir(tmp_path: Path, settings: dict, per_user: bool = True) -> Path:
    data = tmp_path / "run"
    m = {"top1": 0.1, "top3": 0.2, "ksr": 0.3, "words": 10, **({"per_user": [[10, 2, 3, 30]]} if per_user else {})}
    report = {"settings": {"corpus": "c.jsonl", "eval_words": 10, **settings},
              "references": {"ngram": m, "ngram_proxy": m, "proxy_lstm": m, "proxy": m},
              "federations": [{"name": "federated", "final_version": "v0009", "final_metrics": m,
                               "global_metrics": m}]}
    (data / "runs" / "federated" / "keyboard" / "models" / "v0009").mkdir(parents=True)
    (data / "runs" / "federated" / "keyboard" / "models" / "v0009" / "manifest.json").write_text("{}")
    (data / "report.json").write_text(json.dumps(report))
    return data


def _version(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text("{}")
    return path


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"central": None, "corpus": None, "v0": None, **kw})


def test_version_0_and_the_central_reference_are_the_ones_the_run_used(tmp_path):
    # --v0 X --pretrain-v0 trains into DIR/models/v0 (tools.simulate.population.ensure_v0): that one
    data = _run_dir(tmp_path, {"v0": str(tmp_path / "given"), "pretrain_v0": True, "no_central": True})
    _version(tmp_path / "given")
    trained = _version(data / "models" / "v0")
    _version(data / "models" / "central")        # a stale central from an earlier run in the same directory
    _, _, final, v0, central = _run_parts(data, _args())
    assert v0 == trained and central is None and final.name == "v0009"
    # a run that had a central reference, since moved: an error that says how to point at it
    data2 = _run_dir(tmp_path / "b", {"v0": str(trained), "central": str(tmp_path / "gone")})
    with pytest.raises(ValueError, match="central reference .*--central"):
        _run_parts(data2, _args())
    assert _run_parts(data2, _args(central=str(_version(tmp_path / "here"))))[4] == tmp_path / "here"


def test_a_report_from_before_per_user_counts_is_refused_before_any_scoring(tmp_path, capsys):
    data = _run_dir(tmp_path, {"no_central": True}, per_user=False)
    with pytest.raises(ValueError, match="predates per-user counts"):
        main(["--data-dir", str(data)])
    with pytest.raises(ValueError, match="no finished simulation here"):
        main(["--data-dir", str(tmp_path / "nothing")])
    # valid JSON of another shape is the same error, not a TypeError or KeyError
    for shape in ([], {"settings": 1, "federations": [1], "references": {"proxy_lstm": 1}},
                  {"settings": {}, "federations": [{"name": "f"}], "references": {"proxy_lstm": {}}}):
        (tmp_path / "odd").mkdir(exist_ok=True)
        (tmp_path / "odd" / "report.json").write_text(json.dumps(shape))
        with pytest.raises(ValueError, match="no finished simulation here"):
            main(["--data-dir", str(tmp_path / "odd")])
    for workers in ("0", "65"):
        with pytest.raises(ValueError, match=r"--workers must be in \[1, 64\]"):
            main(["--data-dir", str(data), "--workers", workers])


def test_each_reference_is_cached_as_soon_as_it_is_scored(tmp_path, monkeypatch):
    """On every held-out word a reference takes minutes: a run stopped at the LSTMs keeps the n-grams."""
    from tests.tools.test_simulate import write_corpus
    from tools.simulate import references
    from tools.simulate.population import load_population

    corpus = write_corpus(tmp_path / "c.jsonl", users=8, texts_per_user=6, seed=1)
    said: list[str] = []

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(references, "score_version", interrupted)
    with pytest.raises(KeyboardInterrupt):
        references.reference_scores(tmp_path, load_population(str(corpus), None), str(corpus), [str(corpus)],
                                    _version(tmp_path / "v0"), None, 40, tmp_path / "log", say=said.append)
    cached = json.loads((tmp_path / "reference.json").read_text())
    assert len(cached) == 3 and all(key.startswith("ngram:") for key in cached), list(cached)
    assert [line.split(":")[0].strip() for line in said] == ["ngram", "ngram_shared", "ngram_proxy"]

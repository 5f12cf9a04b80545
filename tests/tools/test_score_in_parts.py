"""Scoring held-out users in parts, in other processes, gives what scoring them in one does."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from model.corpus import read_corpus, split_users
from tools.evaluate import lstm_factory
from tools.simulate.references import score_version, scored

REPO = Path(__file__).resolve().parents[2]


def test_scoring_in_two_processes_adds_up_to_scoring_in_one(exported_version):
    """The per-user counts, the rates and the word count are the same, in two processes, in this
    one, and through `evaluate_words` itself; the users are split by cost, so the parts hold
    different numbers of users."""
    users = dict(split_users(read_corpus(REPO / "corpora" / "shakespeare.jsonl"), seed=0).test)
    users = dict(list(users.items())[:9])
    for personal in (True, False):
        one = score_version(exported_version, users, 400, personal=personal)
        loop = scored(lstm_factory(str(exported_version), personal=personal), users, 400)
        assert loop["per_user"] == one["per_user"]
        assert all(loop[key] == one[key] for key in ("top1", "top3", "ksr", "words"))
        with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
            parts = score_version(exported_version, users, 400, personal=personal, pool=pool, workers=2)
        assert parts["per_user"] == one["per_user"] and len(one["per_user"]) == len(users)
        assert sum(1 for c in one["per_user"] if c[0]) >= 3   # several users scored, so both parts had work
        for key in ("top1", "top3", "ksr", "words"):
            assert parts[key] == one[key], key
        assert abs(parts["word_perplexity"] - one["word_perplexity"]) < 1e-6 * one["word_perplexity"]

"""The demo's simulation settings: its device count follows the corpus it is given."""

from __future__ import annotations

import pytest

from model.corpus import Record, read_corpus, split_users
from tests.tools.test_simulate import write_corpus
from tools._cli import DEFAULT_CORPUS
from tools.demo import DEMO_DEFAULTS, build_parser, simulation_args


def test_the_demo_runs_its_default_devices_on_the_shipped_corpus():
    sim = simulation_args(build_parser().parse_args(["--no-serve"]))
    assert sim.devices == DEMO_DEFAULTS["devices"] == 16
    assert sim.corpus == DEFAULT_CORPUS and sim.rounds == DEMO_DEFAULTS["rounds"]


def test_the_demo_scores_every_held_out_word_of_the_shipped_corpus_as_the_simulation_does():
    # The demo's claim against the central trigram is read on tools.simulate's word budget, and on
    # the shipped corpus that budget holds every word of the held-out users' scored halves.
    from tools.simulate.cli import build_parser as sim_parser
    from tools.wordeval import scored_words

    sim = simulation_args(build_parser().parse_args(["--no-serve"]))
    assert sim.eval_words == sim_parser().parse_args([]).eval_words
    heldout = split_users(read_corpus(DEFAULT_CORPUS), seed=0).test
    assert scored_words(heldout, sim.eval_words) == scored_words(heldout)


def test_a_corpus_with_fewer_train_users_runs_every_one_of_them(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "small.jsonl", users=12, texts_per_user=3, seed=1)
    train_users = len(split_users(read_corpus(str(corpus)), seed=0).train)
    assert 1 <= train_users < DEMO_DEFAULTS["devices"]
    sim = simulation_args(build_parser().parse_args(["--corpus", str(corpus)]))
    assert sim.devices == train_users
    said = capsys.readouterr().out
    users, devices = ("train user", "device") if train_users == 1 else ("train users", "devices")
    assert f"has {train_users} {users}, so the demo runs {train_users} {devices}" in said
    assert "tools.prepare" not in said


def test_a_one_writer_text_file_runs_one_device_and_says_how_to_get_more(tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text("".join(f"line {i} of one writer's book\n" for i in range(50)))
    assert simulation_args(build_parser().parse_args(["--corpus", str(book)])).devices == 1
    assert f"python -m tools.prepare {book} --texts-per-user 20" in capsys.readouterr().out


def test_a_corpus_without_train_users_is_refused_not_run_on_one_device(tmp_path):
    """It printed "the demo runs 1 device(s)", then failed on "only 0 train user(s)"."""
    import json

    from model.corpus import CorpusError
    names = [f"u{i}" for i in range(400)]
    held = [n for n in names if n not in split_users([Record(n, "x") for n in names], seed=0).train][:4]
    corpus = tmp_path / "held.jsonl"
    corpus.write_text("".join(json.dumps({"user": n, "text": "some words here"}) + "\n" for n in held))
    with pytest.raises(CorpusError, match="no train users"):
        simulation_args(build_parser().parse_args(["--corpus", str(corpus)]))


def test_an_explicit_device_count_is_kept():
    assert simulation_args(build_parser().parse_args(["--devices", "5"])).devices == 5


def test_a_bad_max_words_names_the_demos_own_flag():
    import pytest

    from tools.demo import main
    with pytest.raises(ValueError, match="^--max-words must be >= 1$"):   # not the simulator's --eval-words
        main(["--max-words", "0", "--no-serve"])


def test_a_busy_keyboard_port_is_refused_before_the_simulation(tmp_path, monkeypatch):
    """It was found after the whole simulation (about 4 minutes), with a message naming other
    commands' flags."""
    import socket

    import tools.simulate
    from tools.demo import main

    monkeypatch.setattr(tools.simulate, "simulate", lambda *a: pytest.fail("the simulation ran"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ValueError, match=f"^--keyboard-port {port} cannot be used"):
            main(["--keyboard-port", str(port), "--data-dir", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()

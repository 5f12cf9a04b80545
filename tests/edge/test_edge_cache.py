"""The local text cache: what is never stored, expiry, wipe, pause, held-out split, kill -9."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_runtime.cache import (
    TYPED_TO_RETURN,
    CacheError,
    DamagedCacheError,
    TextCache,
    destroy_files,
    holdout_count,
    is_sensitive,
    wipe_in_place,
)
from edge_runtime.paths import CACHE_DB, CACHE_OPEN_LOCK, PAUSE_AFTER_WIPE

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path: Path, clock: Clock):
    c = TextCache(tmp_path / "data", clock=clock)
    yield c
    c.close()


def texts(records) -> list[str]:
    return [r.text for r in records]


def all_texts(c: TextCache) -> list[str]:
    return texts(c.training_records()) + texts(c.heldout_records())


def raw_file_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith(CACHE_DB))


SENSITIVE_KINDS = [
    "password", "Password", "web_password", "visiblePassword", "email", "emailAddress", "web_email_address",
    "number", "phone", "url", "URI", "private", "pin", "", "   ", None,
    # Not caught by the old deny-list: HTML autocomplete tokens, input types and unknown kinds.
    "tel", "tel-national", "one-time-code", "cc-csc", "cc-number", "creditcard", "new-password", "current-password",
    "ssn", "iban", "name", "given-name", "street-address", "postal-code", "bday", "username", "textPersonName",
    "TYPE_TEXT_VARIATION_POSTAL_ADDRESS", "messages_and_card", "zzz-unknown", "message2",
]


@pytest.mark.parametrize("kind", SENSITIVE_KINDS)
def test_sensitive_kinds_are_recognised(kind):
    assert is_sensitive(kind)


@pytest.mark.parametrize("kind", ["text", "message", "chat", "search", "note", "short_message", "shortMessage",
                                  "long-message", "TYPE_TEXT_VARIATION_EMAIL_SUBJECT", "Web Edit Text"])
def test_ordinary_kinds_are_not_sensitive(kind):
    assert not is_sensitive(kind)


def test_no_sensitive_kind_text_reaches_the_cache_file(cache: TextCache, tmp_path: Path):
    for i, kind in enumerate(SENSITIVE_KINDS):
        assert cache.add(f"zqsens{i}zq", kind) is False
    assert all_texts(cache) == [] and b"zqsens" not in raw_file_bytes(tmp_path / "data")


def test_sensitive_field_text_is_never_stored(cache: TextCache, tmp_path: Path):
    for kind in ("password", "email", "number", "url", "private", "web_password", ""):
        assert cache.add(f"secret-{kind or 'blank'}-zq", kind) is False
    assert cache.add("secret-marked-private-zq", "message", private=True) is False
    assert cache.add("hello there", "message") is True
    assert all_texts(cache) == ["hello there"]
    assert b"secret-" not in raw_file_bytes(tmp_path / "data")


def test_paused_learning_stores_nothing_and_survives_restart(tmp_path: Path, clock: Clock):
    c = TextCache(tmp_path / "d", clock=clock)
    c.set_paused(True)
    assert c.add("typed while paused", "message") is False
    c.close()
    c = TextCache(tmp_path / "d", clock=clock)
    assert c.paused
    assert c.add("still paused after restart", "message") is False
    c.set_paused(False)
    assert c.add("resumed", "message") is True
    assert all_texts(c) == ["resumed"]
    c.close()
    assert b"typed while paused" not in raw_file_bytes(tmp_path / "d")


def test_retention_by_age(cache: TextCache, clock: Clock):
    cache.add("old", "message")
    clock.t += 30 * 86400
    cache.add("middle", "message")
    clock.t += 31 * 86400  # "old" is now 61 days old
    assert cache.enforce_retention() == 1
    assert all_texts(cache) == ["middle"]


def test_expiry_happens_on_add_too(cache: TextCache, clock: Clock):
    cache.add("ancient", "message")
    clock.t += 61 * 86400
    cache.add("fresh", "message")
    assert all_texts(cache) == ["fresh"]


def test_text_typed_while_the_clock_was_unset_survives_the_clock_being_set(tmp_path: Path, clock: Clock):
    """A board without a real-time clock boots in 1970: what it cached then looked 56 years old
    once the clock was set, and the next retention check deleted it, with everything before it."""
    for before in ([], ["typed before"]):
        c = TextCache(tmp_path / f"d{len(before)}", clock=clock)
        now = clock.t
        for t in before:
            c.add(t, "message")
        clock.t = 86400.0                               # 2 January 1970
        c.add("typed offline", "message")
        assert c.enforce_retention() == 0
        clock.t = now + 60                              # set again
        assert c.enforce_retention() == 0
        c.add("typed after", "message")
        assert all_texts(c) == [*before, "typed offline", "typed after"]
        clock.t = now + 61 * 86400                      # and retention still works for all of it
        assert c.enforce_retention() == len(before) + 2 and all_texts(c) == []
        clock.t = now
        c.close()


def test_a_clock_that_ran_ahead_does_not_keep_later_text_forever(cache: TextCache, clock: Clock):
    """Stamping every text at least as late as the newest kept all text past a clock that once
    read 2099 until 2099 (the review of the first fix)."""
    now = clock.t
    clock.t = 4_070_908_800.0                           # a bad clock: 2099
    cache.add("typed in 2099", "message")
    clock.t = now
    cache.add("typed now", "message")
    clock.t = now + 61 * 86400
    assert cache.enforce_retention() == 1 and all_texts(cache) == ["typed in 2099"]


def test_an_undecodable_row_is_damage_and_its_text_is_never_in_the_error(tmp_path: Path):
    """Python's sqlite3 quotes a row it cannot decode whole: one flipped bit put a user's sentence
    in the keyboard's log and in its 503 answers."""
    c = TextCache(tmp_path / "d")
    c.add("secret plan behind the kumquat orchard", "message")
    c._db.execute("UPDATE texts SET text = CAST(X'736563726574FF706C616E' AS TEXT)")   # "secret\xffplan"
    with pytest.raises(DamagedCacheError) as e:
        list(c.training_records()) + list(c.heldout_records())
    assert "secret" not in str(e.value) and "column 'text'" in str(e.value)
    c.close()


def test_a_full_disk_is_named_not_hidden_behind_a_failed_rollback(tmp_path: Path):
    """SQLite rolls back by itself on a full disk; the second ROLLBACK's "no transaction is
    active" replaced the reason."""
    c = TextCache(tmp_path / "d")
    c._db.execute("PRAGMA max_page_count = 2")   # the file cannot grow: as a full disk
    with pytest.raises(CacheError) as e:
        for i in range(200):
            c.add(f"sentence number {i} " * 40, "message")
    assert "full" in str(e.value) and "rollback" not in str(e.value), str(e.value)
    c.close()


def test_size_cap_drops_oldest_first(tmp_path: Path, clock: Clock):
    c = TextCache(tmp_path / "d", max_bytes=100, clock=clock)
    for i in range(10):
        c.add(f"record {i:02d} " + "x" * 20, "message")  # 30 bytes each
    kept = all_texts(c)
    assert c.stats()["bytes"] <= 100
    assert kept == [f"record {i:02d} " + "x" * 20 for i in range(7, 10)]
    assert c.add("y" * 101, "message") is False  # larger than the whole cache
    c.close()


def test_wipe_removes_everything_from_disk(tmp_path: Path, clock: Clock):
    c = TextCache(tmp_path / "d", clock=clock)
    for i in range(50):
        c.add(f"wipe-me-{i}-zq", "message")
    c.wipe()
    assert c.stats()["records"] == 0
    assert b"wipe-me-" not in raw_file_bytes(tmp_path / "d")
    assert c.add("after wipe", "message")
    assert all_texts(c) == ["after wipe"]
    c.close()


def test_wipe_deletes_a_cache_too_damaged_to_open_and_leaves_learning_paused(tmp_path: Path, capsys):
    from edge_runtime.__main__ import main as cli_main

    d = tmp_path / "d"
    c = TextCache(d)
    for i in range(20):
        c.add(f"see you at the station {i}", "message")
    c.close()
    db = d / CACHE_DB
    db.write_bytes(b"\xff" * 16 + db.read_bytes()[16:])          # its header gone: not a database
    assert cli_main(["status", "--data-dir", str(d)]) == 0       # the rest of the status, and what to do
    said = json.loads(capsys.readouterr().out)
    assert said["learning_paused"] is None and said["model"]["installed"] == []
    assert "the file is damaged" in said["cache"]["error"] and "edge_runtime wipe" in said["cache"]["error"]
    with pytest.raises(DamagedCacheError, match="the file is damaged"):   # refused at open by default
        TextCache(d)
    with TextCache(d, damaged_ok=True) as held:                  # the keyboard's and the loop's: every call says
        with pytest.raises(DamagedCacheError, match="Clear on the keyboard page"):
            held.stats()
    assert b"see you at the station" in raw_file_bytes(d)        # still there until the user wipes
    assert cli_main(["wipe", "--data-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "could not be read" in out and "overwritten in place and deleted" in out and "learning is paused" in out
    assert b"see you at the station" not in raw_file_bytes(d)
    with TextCache(d) as fresh:                                  # a new, empty cache, paused: the private side
        assert fresh.stats()["records"] == 0 and fresh.paused


def test_a_damaged_cache_on_a_full_disk_is_wiped_and_said_so(tmp_path: Path, capsys, monkeypatch):
    """A damaged cache with no room for the new, paused one: its text was destroyed, then the
    new file failed and `wipe` said "error: ..." (exit 1), as if nothing had been wiped. It is now
    the full disk's wipe: done, and the next cache made starts paused."""
    from edge_runtime import cache as cache_mod
    from edge_runtime.__main__ import main as cli_main

    d = tmp_path / "d"
    with TextCache(d) as c:
        c.add("see you at the station", "message")
    db = d / CACHE_DB
    db.write_bytes(b"\xff" * 16 + db.read_bytes()[16:])
    monkeypatch.setattr(cache_mod, "make_paused", lambda data_dir: (_ for _ in ()).throw(OSError(28, "full")))
    assert cli_main(["wipe", "--data-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "could not be read" in out and "no room for a new cache yet" in out, out
    assert not db.exists()
    monkeypatch.undo()
    with TextCache(d) as fresh:
        assert fresh.paused and fresh.stats()["records"] == 0


def test_a_cache_held_open_damaged_follows_the_new_file_a_wipe_makes(tmp_path: Path):
    """A replacement is seen by the inode the path names; with nothing holding the damaged file,
    a wipe's unlink freed its inode and the new file could take the same number: the cache stayed
    damaged after the wipe (4 times in 10 on ext4)."""
    d = tmp_path / "d"
    with TextCache(d) as c:
        c.add("see you at the station", "message")
    db = d / CACHE_DB
    db.write_bytes(b"\xff" * 16 + db.read_bytes()[16:])
    with TextCache(d, damaged_ok=True) as held:
        old = db.stat().st_ino
        wipe_in_place(d)                                         # the held file stays allocated,
        assert db.stat().st_ino != old                           # so the new one cannot take its number
        assert held.stats()["records"] == 0 and held.paused      # and the open cache follows it


def test_a_cache_made_after_a_wipe_without_room_is_paused_and_marked(tmp_path: Path, monkeypatch):
    """With no room for the wipe's new, paused cache, the next command made one unpaused (a user
    who had paused was cached again) and without a wipe mark, the same None as a cache never
    wiped: an update trained before the wipe was not seen as learned from wiped text."""
    from edge_runtime import cache as cache_mod

    d = tmp_path / "d"
    with TextCache(d) as c:
        c.add("see you at the station", "message")
        assert c.wipe_mark() is not None                          # a new cache has a mark of its own
    monkeypatch.setattr(cache_mod, "make_paused", lambda data_dir: (_ for _ in ()).throw(OSError(28, "full")))
    gone, made = cache_mod.wipe_in_place(d)
    assert gone and not made and not (d / CACHE_DB).exists()
    with TextCache(d) as again:                                   # room again: the next command's
        assert again.paused and again.wipe_mark() is not None and again.stats()["records"] == 0
    assert not (d / PAUSE_AFTER_WIPE).exists()
    with TextCache(d) as later:                                   # the pause is the user's now
        later.set_paused(False)
    with TextCache(d) as after:
        assert not after.paused



def test_a_cache_opened_while_a_wipe_replaces_the_file_waits_for_the_paused_one(tmp_path: Path, monkeypatch):
    """`wipe_in_place` deletes the file, then renames a new, paused one in. A process that opened
    the cache between the two (`type`, `pause`, a keyboard starting) made a new unpaused file, and
    SQLite applied its WAL to the paused one: the cache came back unpaused, with what was typed
    meanwhile in it. Opening now waits for the replacement (the thread here: another process's)."""
    import threading
    import time

    from edge_runtime import cache as cache_mod

    d = tmp_path / "d"
    with TextCache(d) as c:
        c.add("see you at the station", "message")
    real, events, typed = cache_mod.make_paused, [], []

    def typing_in_the_gap() -> None:
        with TextCache(d) as other:
            events.append("opened")
            typed.append(other.add("typed while the cache was wiped", "message"))

    other = threading.Thread(target=typing_in_the_gap)

    def make_paused_late(data_dir) -> None:
        other.start()
        time.sleep(0.3)   # the other process's open, in the gap (it waits, or gets in now)
        real(data_dir)
        events.append("renamed")

    monkeypatch.setattr(cache_mod, "make_paused", make_paused_late)
    gone, made = cache_mod.wipe_in_place(d)
    other.join(timeout=30)
    assert made and events == ["renamed", "opened"]   # it opened the new file, not one of its own
    assert typed == [False]                            # paused: nothing cached
    with TextCache(d) as after:
        assert after.paused and after.stats()["records"] == 0
    assert not (d / PAUSE_AFTER_WIPE).exists()


def test_a_wipe_that_cannot_take_the_caches_lock_wipes_all_the_same(tmp_path: Path):
    """The lock file is the cache's, not the wipe's: one that cannot be opened (another user's,
    made by `sudo ... status`; here a directory in its place) must not keep the text on disk."""
    d = tmp_path / "d"
    with TextCache(d) as c:
        c.add("see you at the station", "message")
    (d / CACHE_OPEN_LOCK).unlink()
    (d / CACHE_OPEN_LOCK).mkdir()
    gone, made = wipe_in_place(d)
    assert gone and made
    with TextCache(d) as after:
        assert after.paused and after.stats()["records"] == 0


def test_wipe_on_a_full_disk_overwrites_the_text_in_place(tmp_path: Path, capsys, monkeypatch):
    """On a full disk the cache could not be opened to delete its rows (SQLite needs room for its
    WAL files): `wipe` failed and the text stayed. It overwrites the files in place instead."""
    from edge_runtime import cache as cache_mod
    from edge_runtime.__main__ import main as cli_main

    d = tmp_path / "d"
    with TextCache(d) as c:
        c.add("see you at the station", "message")

    def full(cfg):
        raise CacheError(f"cannot open text cache at {d / CACHE_DB}: disk I/O error")

    monkeypatch.setattr(cache_mod, "open_cache", full)
    assert cli_main(["wipe", "--data-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "the disk is full or failing" in out and "overwritten in place" in out
    assert b"see you at the station" not in raw_file_bytes(d)
    monkeypatch.undo()
    with TextCache(d) as fresh:
        assert fresh.stats()["records"] == 0 and fresh.paused
    monkeypatch.setattr(cache_mod, "open_cache", lambda cfg: (_ for _ in ()).throw(CacheError("database is locked")))
    assert cli_main(["wipe", "--data-dir", str(d)]) == 1         # not a full disk: said, nothing destroyed
    assert (d / CACHE_DB).exists()


def test_a_held_cache_follows_its_file_replaced_and_never_makes_one(tmp_path: Path):
    """What a process holding the cache sees of a damaged-cache wipe run elsewhere: while the
    files are gone it says so and creates none; a file it cannot read in their place is an error
    it tries again on the next call; the new cache, once there, it uses: paused, with a new wipe
    mark, nothing of the old text."""
    d = tmp_path / "d"
    held = TextCache(d)
    assert held.add("see you at the station", "message")
    mark = held.wipe_mark()
    destroy_files(d)
    with pytest.raises(CacheError, match="gone"):
        held.add("another text", "message")
    assert not (d / CACHE_DB).exists()
    (d / CACHE_DB).write_bytes(b"\xff" * 4096)                # not a database: said, not adopted
    for _ in range(2):
        with pytest.raises(DamagedCacheError):
            held.stats()
    (d / CACHE_DB).unlink()
    wipe_in_place(d)
    assert held.paused and held.stats()["records"] == 0 and held.wipe_mark() not in (None, mark)
    assert not held.add("another text", "message")
    held.set_paused(False)
    assert held.add("another text", "message") and all_texts(held) == ["another text"]
    held.close()
    assert sorted(f.name for f in d.iterdir()) == [CACHE_OPEN_LOCK, CACHE_DB]   # no temporary directory left


def test_text_without_a_word_is_not_cached(tmp_path: Path):
    with TextCache(tmp_path) as c:
        for nothing in ("...", " ?! ", "\U0001F600", "-- \U0001F44D --"):
            assert c.add(nothing, "message") is False, nothing
        assert c.add("\U0001F600 only emoji.", "message") and c.add("ok", "message")
        assert all_texts(c) == ["\U0001F600 only emoji.", "ok"]


def test_text_that_is_not_unicode_is_one_line_and_caches_nothing(tmp_path: Path, capsys):
    from edge_runtime.__main__ import main as cli_main

    TextCache(tmp_path).close()
    # bytes a terminal in another encoding sends reach argv as lone surrogates
    with pytest.raises(SystemExit) as stop:   # refused by the command line's parser, before anything opens
        cli_main(["type", "--data-dir", str(tmp_path), "--field-kind", "message", "\udcff\udcfe secret x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "not UTF-8" in err[0] and "codec" not in err[0], err
    assert "secret" not in err[0]   # the line names the argument, never the text
    with TextCache(tmp_path) as c:
        assert c.stats()["records"] == 0


def test_a_text_typed_unquoted_is_refused_without_its_words(tmp_path: Path, capsys):
    """`type ... see you at six`, the text not quoted as one argument: argparse's own line was
    "unrecognized arguments: you at six", the user's words on stderr (a service's goes to the
    journal). It says how many, never which."""
    from edge_runtime.__main__ import main as cli_main

    TextCache(tmp_path).close()
    with pytest.raises(SystemExit) as stop:
        cli_main(["type", "--data-dir", str(tmp_path), "--field-kind", "message", "meet", "qqsecret", "--qqflag"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "unrecognized arguments" in err, err
    assert "qqsecret" not in err and "qqflag" not in err and "meet" not in err, err
    with TextCache(tmp_path) as c:
        assert c.stats()["records"] == 0
    with pytest.raises(SystemExit) as stop:   # other commands still name what they did not take
        cli_main(["status", "--data-dir", str(tmp_path), "--qqflag"])
    assert stop.value.code == 2 and "--qqflag" in capsys.readouterr().err


def test_type_reads_the_text_from_stdin_out_of_the_process_list(tmp_path: Path, capsys, monkeypatch):
    """The text was a positional argument only: readable by every local user in /proc/PID/cmdline
    and kept in the shell's history."""
    import io

    from edge_runtime.__main__ import main as cli_main

    TextCache(tmp_path).close()
    monkeypatch.setattr("sys.stdin", io.StringIO("my bank pin hint is a secret\n"))
    assert cli_main(["type", "--data-dir", str(tmp_path), "--field-kind", "message"]) == 0
    assert capsys.readouterr().out.strip() == "cached"
    with TextCache(tmp_path) as c:
        assert all_texts(c) == ["my bank pin hint is a secret"]


def test_a_removed_word_typed_capitalised_counts_towards_its_return(tmp_path: Path):
    """A removed lowercase word hides its capitalised form too, but typed at a sentence's start
    ("Wobblesnatch parade today") it did not count towards its return, and stayed hidden."""
    from edge_runtime.cache import TYPED_TO_RETURN

    with TextCache(tmp_path) as c:
        c.change_removed(mark=c.wipe_mark(), add="wobblesnatch")
        c.change_removed(mark=c.wipe_mark(), add="May")
        for n in range(TYPED_TO_RETURN):
            assert "wobblesnatch" in c.removed_words(), n
            assert c.add("Wobblesnatch parade in may", "message", typed=["Wobblesnatch", "parade", "in", "may"])
        assert c.removed_words() == {"May"}   # a capitalised one counts as typed only: "may" is another word


def test_words_removed_under_the_release_that_kept_them_as_a_list_stay_removed(tmp_path: Path, caplog):
    """The first release with removed words (4 December 2026) kept them as a JSON list of words; the
    next kept [texts typed since, when removed] per word and read that list as a damaged record
    ("it starts empty"), so every word the user had removed was suggested again after the upgrade."""
    import sqlite3

    from edge_runtime.cache import REMOVED_KEY, TYPED_TO_RETURN

    with TextCache(tmp_path) as c:
        c.add("see you at the station", "message")
    db = sqlite3.connect(tmp_path / "text_cache.sqlite3")
    with db:
        db.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (REMOVED_KEY, '["station", "Smith"]'))
    db.close()
    with caplog.at_level("WARNING", logger="edge_runtime.cache"), TextCache(tmp_path) as c:
        assert c.removed_words() == {"station", "Smith"}
        for _ in range(TYPED_TO_RETURN):   # and they come back as any removed word does
            c.add("the station again", "message", typed=["the", "station", "again"])
        assert c.removed_words() == {"Smith"}
    assert "damaged" not in caplog.text


def test_type_refuses_more_than_one_commit_holds_and_caches_nothing(tmp_path: Path, capsys, monkeypatch):
    """`type` took 2 MB from stdin as one text, which a running keyboard then learned under the lock
    every strip takes; the keyboard page's commits hold at most its MAX_TEXT characters."""
    import io

    from edge_runtime.__main__ import main as cli_main
    from edge_runtime.cache import MAX_TEXT

    TextCache(tmp_path).close()
    monkeypatch.setattr("sys.stdin", io.StringIO("word " * (MAX_TEXT // 5 + 1)))
    assert cli_main(["type", "--data-dir", str(tmp_path), "--field-kind", "message"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the text is 16,385 characters; a commit holds at most 16,384") and "parts" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("w" * MAX_TEXT))
    assert cli_main(["type", "--data-dir", str(tmp_path), "--field-kind", "message"]) == 0
    with TextCache(tmp_path) as c:
        assert [len(t) for t in all_texts(c)] == [MAX_TEXT]


@pytest.mark.parametrize(("n", "k"), [(0, 0), (1, 1), (5, 1), (10, 1), (11, 2), (20, 2), (100, 10)])
def test_holdout_count(n, k):
    assert holdout_count(n, 0.1) == k


def test_holdout_boundary_only_moves_forward():
    trained_prefix = [n - holdout_count(n, 0.1) for n in range(200)]
    assert trained_prefix == sorted(trained_prefix)


def test_heldout_is_the_newest_part_and_disjoint(cache: TextCache):
    for i in range(25):
        cache.add(f"t{i}", "message")
    train, held = texts(cache.training_records()), texts(cache.heldout_records())
    assert held == ["t22", "t23", "t24"]
    assert train == [f"t{i}" for i in range(22)]
    assert cache.stats() == {"records": 25, "bytes": sum(len(f"t{i}") for i in range(25)), "training": 22, "heldout": 3}


def test_single_record_is_held_out(cache: TextCache):
    cache.add("only one", "message")
    assert texts(cache.training_records()) == []
    assert texts(cache.heldout_records()) == ["only one"]


def test_wal_mode_and_private_permissions(cache: TextCache, tmp_path: Path):
    db = tmp_path / "data" / CACHE_DB
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert db.stat().st_mode & 0o077 == 0
    assert (tmp_path / "data").stat().st_mode & 0o077 == 0


def test_survives_kill_9(tmp_path: Path):
    """Every add that returned before SIGKILL is on disk afterwards, and the database is intact."""
    data = tmp_path / "d"
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from edge_runtime.cache import TextCache
        c = TextCache({str(data)!r})
        i = 0
        while True:
            c.add(f"line {{i}}", "message")
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    for line in proc.stdout:  # type: ignore[union-attr]
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()  # type: ignore[union-attr]

    c = TextCache(data)
    stored = set(all_texts(c))
    assert {f"line {i}" for i in range(acknowledged + 1)} <= stored
    assert c._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.close()


def test_wipe_says_so_when_another_reader_keeps_the_text_on_disk(tmp_path: Path):
    """Failed on the old code: wipe reported success while a reader's snapshot kept the text in
    the main database file."""
    import sqlite3

    from edge_runtime.cache import CacheError

    c = TextCache(tmp_path / "d")
    for i in range(50):
        c.add(f"zqwipe{i} hello there friend", "message")
    c._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")          # the text is now in the main file
    reader = sqlite3.connect(c.path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM texts").fetchone()   # another process holds a snapshot
    try:
        with pytest.raises(CacheError, match="another process"):
            c.wipe(wait_s=0.2)
        assert all_texts(c) == []                              # deleted for every new reader
    finally:
        reader.close()
    c.wipe()                                                   # the reader let go: the wipe completes
    assert b"zqwipe" not in raw_file_bytes(tmp_path / "d")
    c.close()


def test_a_read_only_data_dir_is_a_cache_error_that_status_reports(tmp_path: Path, capsys, monkeypatch):
    """On a read-only file system (a mounted backup) opening the cache made its file 0600 first, and
    the chmod's OSError ended `status` with "error: OSError: [Errno 30]" and no status at all."""
    import errno
    import os

    from edge_runtime.__main__ import main as cli_main

    d = tmp_path / "d"
    with TextCache(d) as c:
        c.add("see you at the station", "message")
    os.chmod(d / CACHE_DB, 0o644)               # as a copy made with another umask would be

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "chmod", read_only)
    with pytest.raises(CacheError, match="Read-only file system"):
        TextCache(d)
    assert cli_main(["status", "--data-dir", str(d)]) == 0
    said = json.loads(capsys.readouterr().out)
    assert "Read-only file system" in said["cache"]["error"]


def test_a_word_removed_in_decomposed_form_counts_when_typed_composed(tmp_path: Path):
    """Text is read in NFC (`protocol.text.nfc`), so a word removed from the strip in decomposed
    form (before that, or by a client sending it so) is the same word as the one typed again."""
    import unicodedata

    with TextCache(tmp_path) as c:
        mark = c.wipe_mark()
        c.change_removed(mark=mark, add=unicodedata.normalize("NFD", "café"))
        assert c.removed_words() == {"café"}
        for _ in range(TYPED_TO_RETURN):
            c.change_removed(mark=mark, typed=["café"])
        assert c.removed_words() == frozenset()   # typed again: back in the strip


def test_texts_a_smaller_cap_deletes_are_said(tmp_path, caplog):
    """`FEDKEYS_EDGE_MAX_CACHE_BYTES=1000 ... type` (one command) deleted most of the cache and
    printed only "cached". The cap is the user's to set; its deletions are now logged."""
    import logging

    from edge_runtime.cache import TextCache

    c = TextCache(tmp_path / "c.sqlite3")
    for i in range(6):
        assert c.add(f"some text number {i} here", "message")
    c.close()
    c = TextCache(tmp_path / "c.sqlite3", max_bytes=40)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.cache"):
        assert c.add("short one here", "message")
        for i in range(20):   # a full cache deletes its oldest at every commit: said once, not each time
            assert c.add(f"another text {i}", "message")
    c.close()
    assert "deleted the 5 oldest text(s)" in caplog.text and "max_cache_bytes" in caplog.text
    assert caplog.text.count("oldest text(s)") == 1
    assert "text number" not in caplog.text      # counts only, never the text


def test_a_failed_open_says_what_the_disk_says(tmp_path, monkeypatch):
    """SQLite names only its symptom: "disk I/O error" on a full disk, "unable to open database
    file" on a read-only one (neither tells the device's owner what to do). The folder's file
    system is asked, and its answer is said."""
    import os
    from types import SimpleNamespace

    from edge_runtime import cache as cache_mod

    path = tmp_path / "text_cache.sqlite3"
    assert cache_mod._cause(path) == ""
    monkeypatch.setattr(cache_mod.os, "statvfs", lambda p: SimpleNamespace(f_flag=0, f_bavail=0))
    assert cache_mod._cause(path) == " (the disk is full)"
    monkeypatch.setattr(cache_mod.os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY, f_bavail=9))
    assert "read-only file system" in cache_mod._cause(path)
    (tmp_path / "d" / "text_cache.sqlite3").mkdir(parents=True)   # an open that fails in SQLite
    with pytest.raises(CacheError, match=r"unable to open database file \(its folder is on a read-only"):
        TextCache(tmp_path / "d")


def test_a_text_the_cache_deleted_is_not_left_readable_in_its_log(tmp_path):
    """Texts deleted by the size cap or the retention were zeroed in the database but stayed
    readable in its write-ahead log for hundreds of commits, and the log grew to 4 MB whatever the
    cap on a long-lived device. A deletion is followed by a checkpoint, and the log is
    checkpointed and cut back often."""
    from edge_runtime.cache import TextCache

    c = TextCache(tmp_path / "c.sqlite3", max_bytes=400)
    assert c.add("my bank pin is zorbuliant", "message")
    for i in range(30):
        assert c.add(f"an ordinary message about the weather, number {i}", "message")
    assert not any("zorbuliant" in r.text for r in c.texts_after(0))
    files = [p for p in c.path.parent.iterdir() if p.name.startswith(c.path.name)]
    assert files and not any(b"zorbuliant" in p.read_bytes() for p in files), [p.name for p in files]
    for i in range(300):
        c.add(f"more text to fill the log {i} " * 4, "message")
    wal = c.path.parent / (c.path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size <= 512 * 1024, wal.stat().st_size
    c.close()


def test_type_with_a_field_kind_it_does_not_learn_from_names_the_ones_it_does(tmp_path: Path, capsys):
    """`type --field-kind mesage` (a typo) said "not cached: sensitive field (mesage)", and exit 0:
    nothing told the user that the kind, not the text, was the trouble, nor which kinds are learned."""
    from edge_runtime.__main__ import main as cli_main
    from edge_runtime.cache import LEARNABLE_FIELD_KINDS

    TextCache(tmp_path).close()
    for kind in ("mesage", "password"):
        assert cli_main(["type", "--data-dir", str(tmp_path), "--field-kind", kind, "see you at six"]) == 0
        out = capsys.readouterr().out.strip()
        assert out.startswith(f"not cached: sensitive field ({kind})") and "\n" not in out, out
        assert all(k in out for k in LEARNABLE_FIELD_KINDS), out
    assert cli_main(["type", "--data-dir", str(tmp_path), "--field-kind", "message", "--private", "hi there"]) == 0
    assert capsys.readouterr().out.strip() == "not cached: private field"
    with TextCache(tmp_path) as c:
        assert all_texts(c) == []

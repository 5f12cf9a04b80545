"""The keyboard page's JSON API over loopback HTTP, without a browser.

Covers the contract (suggest, commit, status, pause, clear), its errors (always JSON), the
loopback-only bind, Host/Origin checks, and that log lines never carry typed text.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import sqlite3
import threading
import time

import pytest
import requests

from edge_runtime import channel, keyboard, keyboard_app, keyboard_http, model_slot, user_words
from edge_runtime.__main__ import main as cli_main
from edge_runtime.keyboard import KeyboardError, check_bind_host, start_keyboard
from edge_runtime.model_slot import ModelSlot
from edge_runtime.paths import CACHE_DB, PERSONAL_DIR, UNSENT_DELTA, UNSENT_META
from edge_runtime.personal import PersonalModel
from edge_runtime.versions import VersionStore, directory_fetch
from protocol import wire
from protocol.artifact import TOKENIZER, read_manifest
from protocol.text import tokens
from tests.helpers.damaged import damaged_cache
from tests.helpers.versions import with_notices

SECRET = "quokka zanzibar xylophone"


@pytest.fixture
def server(tmp_path, exported_version):
    with start_keyboard(tmp_path / "device", model_dir=exported_version, channel="canary") as s:
        yield s


def post(server, route: str, body, **kw) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    headers = {"Content-Type": "application/json", "X-Keyboard-Token": server.token, **kw.pop("headers", {})}
    return requests.post(server.url + route.lstrip("/"), data=data, headers=headers, timeout=10, **kw)


def db_rows(server) -> list[str]:
    path = server.app.cache.path
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT text FROM texts ORDER BY id")]


# --- the contract -------------------------------------------------------------------------------

def test_status_reports_model_channel_count_and_pause(server, exported_version):
    st = requests.get(server.url + "api/status", timeout=5).json()
    assert st == {"model": {"version_id": read_manifest(exported_version).version_id, "channel": "canary"},
                  "cache": {"sentences": 0}, "paused": False}


def test_static_page_and_assets_are_served_with_a_strict_policy(server):
    r = requests.get(server.url, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert 'id="strip"' in r.text and "data-private" in r.text and "http" not in r.text.split("<body>")[1]
    for asset, ctype in (("static/sentences.js", "text/javascript"), ("static/keyboard.js", "text/javascript"),
                         ("static/keyboard.css", "text/css")):
        r = requests.get(server.url + asset, timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype)
    assert requests.get(server.url + "static/../keyboard.py", timeout=5).status_code == 404


def test_suggest_is_incremental_per_client_and_best_first(server):
    a1 = post(server, "api/suggest", {"client": "a", "text": "I pray you, "}).json()
    assert len(a1["suggestions"]) == 3 and len(set(a1["suggestions"])) == 3 and a1["version_id"]
    a2 = post(server, "api/suggest", {"client": "a", "text": "I pray you, t"}).json()["suggestions"]
    assert a2 and all(w.startswith("t") for w in a2)
    # Another client with the same text gets the same answer: sessions are independent.
    assert post(server, "api/suggest", {"client": "b", "text": "I pray you, t"}).json()["suggestions"] == a2
    # Backspace (shorter text) rewinds the session.
    assert post(server, "api/suggest", {"client": "a", "text": "I pray you, "}).json() == a1
    direct = server.app.slot.predictor.session().update("I pray you, ")
    assert a1["suggestions"] == direct   # the predictor's best-first order, unchanged


def test_a_keystroke_waiting_behind_a_newer_one_of_its_client_is_not_run(server):
    """A page gives up on a strip after 10 s and asks for the next: the keystroke it gave up on,
    still waiting for the model, is answered without it, and the newer one gets the strip."""
    app, answers = server.app, {}

    def ask(name: str, text: str) -> None:
        answers[name] = post(server, "api/suggest", {"client": "a", "text": text}).json()

    def asked(n: int) -> None:   # the request has been numbered (it waits for the lock next)
        deadline = time.monotonic() + 10
        while app._asks < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app._asks >= n

    start = app._asks
    with app.slot.lock:   # the model busy with something else (a slow board's keystroke)
        old = threading.Thread(target=ask, args=("old", "I pray yo"))
        old.start()
        asked(start + 1)
        new = threading.Thread(target=ask, args=("new", "I pray you, t"))
        new.start()
        asked(start + 2)
        other = threading.Thread(target=lambda: answers.update(
            b=post(server, "api/suggest", {"client": "b", "text": "I pray yo"}).json()))
        other.start()   # another client's keystroke is its own newest
        asked(start + 3)
    for t in (old, new, other):
        t.join(10)
    assert answers["old"]["suggestions"] == [] and answers["old"]["superseded"] is True
    assert "superseded" not in answers["new"] and "superseded" not in answers["b"]
    with app.slot.lock:
        assert answers["new"]["suggestions"] == app.slot.predictor.session().update("I pray you, t")
        assert answers["b"]["suggestions"] == app.slot.predictor.session().update("I pray yo")


def test_the_space_after_a_word_is_readied_between_keystrokes(server):
    """After answering a keystroke the server readies the session for a space (`Session.prefetch`);
    the answer to that space is the strip a fresh session gives."""
    post(server, "api/suggest", {"client": "a", "text": "I pray yo"})
    post(server, "api/suggest", {"client": "a", "text": "I pray you"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with server.app.slot.lock:
            readied = server.app._sessions["a"][1].readied
        if readied is not None and readied.chunk == "you" and readied.strip is not None:
            break   # the state is fed in one call and the strip ranked in the next
        time.sleep(0.01)
    assert readied is not None and readied.chunk == "you" and readied.strip is not None
    got = post(server, "api/suggest", {"client": "a", "text": "I pray you "}).json()["suggestions"]
    assert got == readied.strip == server.app.slot.predictor.session().update("I pray you ")
    # Wiping the user's data also forgets the texts being typed and what was readied from them.
    assert post(server, "api/clear", {}).status_code == 200
    assert not server.app._sessions and server.app.slot.predictor._warm is None


def test_after_a_space_the_next_words_first_letters_are_readied(server):
    """After a space the server ranks the next word's likeliest first letters between keystrokes;
    a first letter is then answered from them, with the strip a fresh session gives."""
    from edge_runtime.session import FIRST_LETTERS

    app = server.app
    post(server, "api/suggest", {"client": "a", "text": "I pray you "})
    assert _until(lambda: _firsts(app, "a") == FIRST_LETTERS)
    with app.slot.lock:
        session = app._sessions["a"][1]
        c = next(iter(session.firsts.strips))
        readied = list(session.firsts.strips[c])
    got = post(server, "api/suggest", {"client": "a", "text": "I pray you " + c}).json()["suggestions"]
    with app.slot.lock:   # the interpreter is not thread-safe: under the server's own lock
        assert got == readied == app.slot.predictor.session().update("I pray you " + c)


def test_idle_work_runs_off_the_connection_and_stops_when_the_user_types(server, monkeypatch):
    """The page reuses one keep-alive connection. The idle work runs on the server's idle thread,
    so the next keystroke on that connection is read at once, takes the lock between two calls,
    and ends the work for the state the user left: here the idle work for a word being typed is
    endless, and ends only that way."""
    from edge_runtime.session import Session

    threads, texts = set(), []
    real = Session.prefetch

    def endless(self, k=3):   # for the word being typed: never done
        threads.add(threading.current_thread().name)
        texts.append(self.text)
        more = real(self, k)
        time.sleep(0.001)
        return more or self.text == "I pray you"

    monkeypatch.setattr(Session, "prefetch", endless)
    headers = {"Content-Type": "application/json", "X-Keyboard-Token": server.token}
    with requests.Session() as page:   # one connection, as the browser's fetch keeps it
        for text in ("I pray you", "I pray you "):
            r = page.post(server.url + "api/suggest", data=json.dumps({"client": "a", "text": text}),
                          headers=headers, timeout=10)
            assert r.status_code == 200
            assert _until(lambda t=text: texts and texts[-1] == t)   # the idle work runs for this state
        assert server._server.idle.wait(timeout=5), "the idle work did not stop when the user typed"
    assert threads == {"keyboard-idle"} and texts[-1] == "I pray you "


def test_idle_work_waits_while_a_commits_words_are_counted(server, monkeypatch):
    """Each counted part of a commit changes the strips, so idle work done meanwhile would be
    thrown away part after part: it waits, and the commit submits it once the words are counted."""
    from edge_runtime.session import Session

    app = server.app
    done = server._server.idle.done
    post(server, "api/suggest", {"client": "a", "text": "I pray you"})
    assert server._server.idle.wait(after=done)   # the strip's own idle work, submitted after the answer
    calls = []
    real = Session.prefetch
    monkeypatch.setattr(Session, "prefetch", lambda self, k=3: calls.append(self.text) or real(self, k))
    with app.slot.lock:
        app._sessions["a"][1].update("I pray you ")
    app._counting = True
    app.prefetch("a")
    assert calls == []
    app._counting = False
    app.prefetch("a")
    assert calls and calls[0] == "I pray you "


def test_answers_are_not_held_back_by_nagles_algorithm(server, monkeypatch):
    """Headers and body are two writes: with Nagle's algorithm on, an answer could wait ~40 ms for
    the page's delayed ACK. The server's sockets have TCP_NODELAY set."""
    seen = []
    real = keyboard_http.KeyboardHandler.setup

    def setup(self):
        real(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(keyboard_http.KeyboardHandler, "setup", setup)
    assert post(server, "api/suggest", {"client": "a", "text": "I pray"}).status_code == 200
    assert seen and all(seen)


def _firsts(app, client: str) -> int:
    with app.slot.lock:
        f = app._sessions[client][1].firsts
        return len(f.strips) if f is not None and f.base is app._sessions[client][1].nodes[-1] else -1


def _until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_a_commit_readies_the_session_being_typed_in_again(server):
    """The page commits a finished sentence or a sent message while it asks for the next strip, so
    the commit's learn lands after that strip's prefetch and re-ranks the user's words under it.
    The server prefetches the session that asked last once more after the learn: a readied space
    carries the strip for the user's words as they are now, and the empty field's first letters
    have their cut of the user's first words (one list, indexed by word) ready. The commit names
    its page's client; without one the session that asked last is readied."""
    from edge_runtime.personal import _SCAN, BOS

    app = server.app
    predictor = app.slot.predictor
    # more first words than are scanned (letters: a token of digits and letters is never offered)
    first_words = ["w" + chr(97 + i // 26) + chr(97 + i % 26) for i in range(_SCAN + 8)]
    for w in first_words:
        app.commit({"text": f"{w} came first.", "field_kind": "message"})
    post(server, "api/suggest", {"client": "a", "text": "I pray yo"})
    post(server, "api/suggest", {"client": "old", "text": ""})   # another page, asked earlier
    post(server, "api/suggest", {"client": "b", "text": ""})     # the field a send just emptied

    def readied(client: str) -> bool:
        with app.slot.lock:
            start = predictor.personal._by_word.get((BOS, BOS))
            return (predictor._warm is not None and predictor._warm[0] is app._sessions[client][1].nodes[-1]
                    and start is not None and start[0] is predictor.personal.ranked((BOS, BOS)))

    assert _until(lambda: readied("b"))
    r = post(server, "api/commit", {"text": "Zounds, a new first word.", "field_kind": "message"})
    assert r.json()["cached"] is True
    assert _until(lambda: readied("b")), "the empty field's first letters were not readied after the learn"
    with app.slot.lock:
        assert predictor.personal.ranked((BOS, BOS))[-1] == "Zounds"   # the list that was cut is the new one

    post(server, "api/suggest", {"client": "a", "text": "I pray you"})   # client a types on
    assert _until(lambda: app._sessions["a"][1].readied is not None
                  and app._sessions["a"][1].readied.chunk == "you"
                  and app._sessions["a"][1].readied.strip is not None)
    stale = app._sessions["a"][1].readied
    post(server, "api/suggest", {"client": "b", "text": ""})   # another page asks after it
    # a's page commits a finished sentence and names itself: a is readied, not the last to ask
    post(server, "api/commit", {"text": "A sentence finished meanwhile.", "field_kind": "message",
                                "client": "a"})

    def fresh() -> bool:
        with app.slot.lock:
            r = app._sessions["a"][1].readied
            return r is not stale and r.chunk == "you" and r.ranked(3, predictor.strip_key())

    assert _until(fresh), "the readied space still carries the strip from before the commit"
    got = post(server, "api/suggest", {"client": "a", "text": "I pray you "}).json()["suggestions"]
    with app.slot.lock:   # the server may still be preparing a's next keystroke
        assert got == app._sessions["a"][1].readied.strip == predictor.session().update("I pray you ")
    r = post(server, "api/commit", {"text": "x", "field_kind": "message", "client": 5})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_a_commit_learns_one_model_step_per_hold_of_the_lock(server):
    """A keystroke that arrives during a commit's learn waits for one model step, not the text:
    the lock is let go between steps. A wipe between two steps forgets the text."""
    app = server.app
    post(server, "api/suggest", {"client": "a", "text": ""})
    predictor = app.slot.predictor
    real_lock, holds = app.slot.lock, []

    class CountingLock:
        def __enter__(self):
            real_lock.acquire()
            holds.append(1)

        def __exit__(self, *exc):
            real_lock.release()

    app.slot.lock = CountingLock()
    try:
        text = "Good morrow to you all, my gentle friends and neighbours"
        assert app.commit({"text": text, "field_kind": "message"})["cached"] is True
    finally:
        app.slot.lock = real_lock
    assert len(holds) > len(tokens(text)) and app.personal().uni["neighbours"] == 1

    real_learning = predictor.learning

    def wiped_between_steps(t):   # what `clear` does (under the lock) between two steps
        steps = real_learning(t)
        yield next(steps)
        app._personal = None
        predictor.personal = PersonalModel()
        yield from steps

    predictor.learning = wiped_between_steps
    try:
        assert app.commit({"text": "Zanzibar quokkas everywhere", "field_kind": "message"})["cached"] is True
    finally:
        del predictor.learning
    assert predictor.personal.uni["Zanzibar"] == 0 and app.personal().uni["Zanzibar"] == 1  # rebuilt from the cache


def test_the_users_words_are_settled_out_of_the_collectors_walks_once_built(server):
    """Built from the cache, the user's words are frozen out of the cyclic collector (as the
    base n-gram is), so a full collection does not walk them during a keystroke."""
    app = server.app
    for i in range(3):
        assert post(server, "api/commit", {"text": f"wombat number {i} was here", "field_kind": "message"}).ok
    app._personal = None   # built again from the cache, as on the first keystroke of a run
    words = app.personal()
    assert words.uni["wombat"] == 3 and gc.is_tracked(words.follow)   # a dict of dicts: tracked
    frozen = gc.get_freeze_count()
    walked = {id(o) for o in gc.get_objects()}
    assert frozen > 0 and id(words.follow) not in walked and id(words) not in walked
    assert app.personal() is words


def test_the_users_words_are_built_when_the_server_starts_not_on_the_first_keystroke(tmp_path, exported_version):
    """From a large cache they take a second or more to build; the first keystroke must not wait."""
    with start_keyboard(tmp_path / "device", model_dir=exported_version, channel="canary") as s:
        for i in range(3):
            assert post(s, "api/commit", {"text": f"numbat number {i} was here", "field_kind": "message"}).ok
    with start_keyboard(tmp_path / "device", model_dir=exported_version, channel="canary") as s:
        assert s._server.idle.wait()   # no keystroke yet: only what the server submitted as it started
        words = s.app._personal
        assert words is not None and words.uni["numbat"] == 3
        done = s._server.idle.done
        assert post(s, "api/suggest", {"client": "a", "text": "numb"}).ok and s.app._personal is words
        assert s._server.idle.wait(after=done)   # the strip's idle work, so the wait below is the wipe's
        done = s._server.idle.done
        assert post(s, "api/clear", {}).ok   # a wipe drops them; the idle work builds them again
        assert s._server.idle.wait(after=done)   # submitted once the answer is on the wire
        assert s.app._personal is not None and s.app._personal is not words and not s.app._personal.uni


def test_a_keystroke_does_not_wait_for_a_large_cache_to_be_counted(tmp_path, exported_version, monkeypatch):
    """The idle thread counted the user's words under the slot's lock: at the default 4 MiB cap
    (22,000 texts) the first keystroke after a start waited 5 s on x86. They are counted
    off the lock; keystrokes meanwhile go without them, and the texts cached meanwhile join them."""

    with start_keyboard(tmp_path / "device", model_dir=exported_version, channel="canary") as s:
        for i in range(3):
            assert post(s, "api/commit", {"text": f"numbat number {i} was here", "field_kind": "message"}).ok
    release, counting = threading.Event(), threading.Event()
    count = keyboard_app.KeyboardApp._count_cache

    def slow_count(app):
        counting.set()
        assert release.wait(30)
        return count(app)

    class Waits(threading.Event):   # how long keystrokes wait for the count
        seen: list = []

        def wait(self, timeout=None):
            self.seen.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(keyboard_app.KeyboardApp, "_count_cache", slow_count)
    with start_keyboard(tmp_path / "device", model_dir=exported_version, channel="canary") as s:
        assert counting.wait(10)
        s.app._built = Waits()
        for _ in range(5):
            r = post(s, "api/suggest", {"client": "a", "text": "numb"})   # not held by the count (10 s)
            assert r.ok and "numbat" not in r.json()["suggestions"]
        assert sum(Waits.seen) <= user_words.BUILD_WAIT_S, Waits.seen   # a moment, once: not each keystroke
        assert post(s, "api/commit", {"text": "a numbat again", "field_kind": "message"}).ok
        release.set()
        assert _until(lambda: s.app._personal is not None)
        assert s.app._personal.uni["numbat"] == 4   # the three counted, and the one cached meanwhile
        assert post(s, "api/suggest", {"client": "a", "text": "numb"}).json()["suggestions"][0] == "numbat"
        # dropped again (a cache that failed to read): a large cache is counted on the idle thread,
        # never on a keystroke
        monkeypatch.setattr(user_words, "SYNC_COUNT_BYTES", 20, raising=False)
        release.clear()
        counting.clear()
        with s.app.slot.lock:
            s.app._personal = None
        assert post(s, "api/suggest", {"client": "b", "text": "numb"}).ok   # not held by the count (10 s)
        release.set()
        assert _until(lambda: s.app._personal is not None) and s.app._personal.uni["numbat"] == 4


def test_a_commit_never_learns_text_twice_or_after_a_wipe(server, caplog):
    """The user's words are read before the text is cached: if they are built from the cache
    around the write (with the text or without it), they are built again, so the text counts once;
    if they are wiped and rebuilt while the commit waits its turn to learn, the commit does not
    learn the text into them. A model step that fails leaves the words to learn the text alone; a
    failure in the last step has them rebuilt from the cache; nothing of the text in the log."""
    app = server.app
    real_add = app.cache.add

    def add_then_build(text, kind, **kw):   # a keystroke builds the user's words right after the write
        ok = real_add(text, kind, **kw)
        app.personal()
        return ok

    def build_then_add(text, kind, **kw):   # ... or right before it
        app.personal()
        return real_add(text, kind, **kw)

    assert server._server.idle.wait()   # the words the server built as it started ...
    app._personal = None                 # ... dropped: nothing built yet when the commit reads them
    app.cache.add = add_then_build
    try:
        assert app.commit({"text": "Zanzibar quokkas", "field_kind": "message"})["cached"] is True
    finally:
        del app.cache.add
    assert app.personal().uni["Zanzibar"] == 1
    app._personal = None   # nothing built yet, again
    app.cache.add = build_then_add
    try:
        assert app.commit({"text": "Wombat walks", "field_kind": "message"})["cached"] is True
    finally:
        del app.cache.add
    assert app.personal().uni["Wombat"] == 1 and app.personal().uni["Zanzibar"] == 1

    hold = app._learning   # another commit is learning: this one waits its turn
    hold.acquire()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (app.commit({"text": "xylophone morning", "field_kind": "message"}),
                                              done.set()))
    worker.start()
    assert _until(lambda: "xylophone morning" in db_rows(server))
    assert post(server, "api/clear", {}).status_code == 200   # the user wipes; a keystroke rebuilds
    post(server, "api/suggest", {"client": "a", "text": "x"})
    hold.release()
    worker.join(10)
    assert done.is_set() and db_rows(server) == []
    assert app.personal().uni["xylophone"] == 0 and app.slot.predictor.personal.uni["xylophone"] == 0

    def broken(text):
        raise RuntimeError(f"interpreter failed on {text!r}")
        yield

    app.slot.predictor.learning = broken   # a model step fails: nothing changed, the words learn it
    caplog.set_level(logging.INFO)
    words = app.personal()
    try:
        r = post(server, "api/commit", {"text": SECRET, "field_kind": "message"})
    finally:
        del app.slot.predictor.learning
    assert r.status_code == 200 and r.json()["cached"] is True
    assert app.personal() is words and words.uni["quokka"] == 1
    assert "model step failed while learning a commit (RuntimeError)" in caplog.text

    real_add = words.add

    def add_fails_half_way(toks, after=None):   # counting: the words are half-counted, so rebuilt
        words.uni["platypus"] += 1
        raise MemoryError("platypus")

    words.add = add_fails_half_way
    r = post(server, "api/commit", {"text": "platypus parade", "field_kind": "message"})
    words.add = real_add
    assert r.status_code == 200 and r.json()["cached"] is True
    rebuilt = app.personal()
    assert rebuilt is not words and rebuilt.uni["platypus"] == 1 and rebuilt.uni["quokka"] == 1
    assert rebuilt.firsts["p"] >= 1 and rebuilt.firsts["q"] >= 1
    assert "learning a commit failed (MemoryError)" in caplog.text
    assert "quokka" not in caplog.text and "platypus" not in caplog.text


def test_a_version_that_comes_in_while_a_long_text_is_counted_counts_the_rest_only(server):
    """The user's words count a long text a part per step; if another version comes in between
    two parts, the words count the rest of the text, not the whole of it again."""
    from edge_runtime.predictor import LEARN_PART, Predictor

    app = server.app
    post(server, "api/suggest", {"client": "a", "text": ""})
    old = app.slot.predictor
    text = " ".join(f"word{i % 40}" for i in range(LEARN_PART * 2 + 10))
    n_tok = len(tokens(text))
    real_learning = old.learning

    def swapped_after_first_part(t):   # what a keystroke's refresh does between two steps
        for i, counted in enumerate(real_learning(t)):
            if i == n_tok:   # the model steps are done and the first part is counted
                new = Predictor(old.model, old.sp, base=old.base)
                new.personal = old.personal
                app.slot.predictor = new
            yield counted

    old.learning = swapped_after_first_part
    before = app.personal().total
    try:
        assert app.commit({"text": text, "field_kind": "message"})["cached"] is True
    finally:
        del old.learning
        app.slot.predictor = old
    words = app.personal()
    assert words.total == before + n_tok and words.uni["word0"] == len(range(0, LEARN_PART * 2 + 10, 40))
    assert words.follow[("word39",)]["word0"] == len(range(40, LEARN_PART * 2 + 10, 40))


def test_commit_pause_and_clear(server):
    r = post(server, "api/commit", {"text": "Good morrow to you.", "field_kind": "message"}).json()
    assert r["cached"] is True and r["cache"]["sentences"] == 1
    r = post(server, "api/commit", {"text": SECRET, "field_kind": "message", "private": True}).json()
    assert r["cached"] is False and r["reason"] == "private field"
    r = post(server, "api/commit", {"text": SECRET, "field_kind": "password"}).json()
    assert r["cached"] is False
    assert post(server, "api/pause", {"paused": True}).json()["paused"] is True
    r = post(server, "api/commit", {"text": "typed while paused", "field_kind": "message"}).json()
    assert r["cached"] is False and r["reason"] == "learning paused" and r["cache"]["sentences"] == 1
    assert post(server, "api/pause", {"paused": False}).json()["paused"] is False
    assert db_rows(server) == ["Good morrow to you."]
    kept = [server.app.cache.data_dir / name for name in (UNSENT_META, UNSENT_DELTA)]   # a device loop's
    for path in kept:
        path.write_bytes(b"{}")
    assert post(server, "api/clear", {}).json()["cache"]["sentences"] == 0
    assert db_rows(server) == [] and not any(p.exists() for p in kept)   # learned from the text: wiped too


def test_a_commit_sent_again_with_its_id_is_stored_once(server, monkeypatch):
    """The page sends a commit again when its answer was lost; stored before the answer failed, it
    was stored twice."""
    from edge_runtime.keyboard_app import KeyboardApp

    real, calls = KeyboardApp.status, []

    def answer_fails_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the answer is lost after the text was cached")
        return real(self)

    monkeypatch.setattr(KeyboardApp, "status", answer_fails_once)
    body = {"text": "Good morrow to you.", "field_kind": "message", "commit_id": "c-1"}
    assert post(server, "api/commit", body).status_code == 500
    again = post(server, "api/commit", body)
    assert again.status_code == 200 and again.json()["cached"] is True and again.json()["cache"]["sentences"] == 1
    assert post(server, "api/commit", {**body, "commit_id": "c-2"}).json()["cache"]["sentences"] == 2   # a new id
    assert db_rows(server) == ["Good morrow to you.", "Good morrow to you."]
    bad = post(server, "api/commit", {**body, "commit_id": "x" * 65})
    assert bad.status_code == 413 and bad.json()["error"] == "too_large"


def test_a_commit_resent_after_a_restart_is_stored_once(tmp_path, exported_version):
    """The ids of stored commits lived in the process: a commit stored just before the device
    process was killed, and resent by the page (which keeps its key across restarts), was stored
    twice. They are kept in the cache with the text, and a wipe forgets them."""
    device = tmp_path / "device"
    body = {"text": "Good morrow to you.", "field_kind": "message", "commit_id": "c-1"}
    with start_keyboard(device, model_dir=exported_version) as first:
        assert post(first, "api/commit", body).json()["cached"] is True
    with start_keyboard(device, model_dir=exported_version) as again:     # the page resends after the restart
        r = post(again, "api/commit", body)
        assert r.json()["cached"] is True and r.json()["cache"]["sentences"] == 1, r.text
        assert post(again, "api/clear", {}).json()["cache"]["sentences"] == 0
        assert post(again, "api/commit", body).json()["cache"]["sentences"] == 1   # after a wipe, new text


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, code", [
    ("{not json", 400, "bad_json"),
    (b"\xff\xfe", 400, "bad_json"),
    ("[1, 2]", 400, "bad_json"),
    ({"client": "a"}, 400, "bad_request"),
    ({"client": "", "text": "x"}, 400, "bad_request"),
    ({"client": "a", "text": 5}, 400, "bad_request"),
    ({"client": "a", "text": "x" * (keyboard_app.MAX_TEXT + 1)}, 413, "too_large"),
])
def test_bad_suggest_requests_get_json_errors(server, body, status, code):
    r = post(server, "api/suggest", body)
    assert r.status_code == status and r.headers["Content-Type"] == "application/json"
    assert r.json()["error"] == code and r.json()["message"]


def test_other_refusals_are_json_too(server):
    def check(r, status, code):
        assert (r.status_code, r.json()["error"]) == (status, code)

    check(post(server, "api/pause", {"paused": "yes"}), 400, "bad_request")
    check(post(server, "api/commit", {"text": "x", "field_kind": "message", "private": "no"}), 400, "bad_request")
    check(post(server, "api/suggest", '{"client": "a", "text": ""}', headers={"Content-Type": "text/plain"}),
          415, "unsupported_media_type")
    check(post(server, "api/clear", {}, headers={"Origin": "https://evil.example"}), 403, "forbidden_origin")
    check(requests.get(server.url + "api/status", headers={"Host": "evil.example"}, timeout=5), 421, "bad_host")
    check(requests.get(server.url + "api/suggest", timeout=5), 405, "method_not_allowed")
    check(requests.delete(server.url + "api/clear", timeout=5), 405, "method_not_allowed")
    check(requests.get(server.url + "nope", timeout=5), 404, "not_found")
    check(post(server, "api/suggest", b"x" * (keyboard_http.MAX_BODY + 1)), 413, "too_large")
    # The server is still fine afterwards.
    assert requests.get(server.url + "api/status", timeout=5).status_code == 200


# --- binding ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_non_loopback_bind_is_refused(tmp_path, host):
    with pytest.raises(KeyboardError, match="non-loopback"):
        start_keyboard(tmp_path, host=host)
    check_bind_host(host, allow_remote=True)   # an explicit --keyboard-host allows it


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host):
    check_bind_host(host)


def test_cli_refuses_non_loopback_host_from_settings(tmp_path, capsys):
    rc = cli_main(["keyboard", "--data-dir", str(tmp_path), "--set", "keyboard_host=0.0.0.0"])
    assert rc == 2 and "non-loopback" in capsys.readouterr().err


def test_cli_keyboard_serves_until_stopped(tmp_path, exported_version, monkeypatch):
    started = {}
    real = keyboard.serve_keyboard

    def serve(*a, stop, on_ready, **kw):
        def ready(url):
            started["url"] = url
            on_ready(url)
            stop.set()
        return real(*a, stop=stop, on_ready=ready, **kw)

    monkeypatch.setattr(keyboard, "serve_keyboard", serve)
    rc = cli_main(["keyboard", "--data-dir", str(tmp_path), "--model", str(exported_version), "--port", "0",
                   "--channel", "stable"])
    assert rc == 0 and started["url"].startswith("http://127.0.0.1:")


def test_a_port_another_program_holds_is_one_line(tmp_path, exported_version, capsys, monkeypatch):
    """It was "error: OSError: [Errno 98] Address already in use", exit 1; and it is said before
    the model loads (seconds on a board), not after."""
    import socket

    loads = []
    monkeypatch.setattr(model_slot.ModelSlot, "refresh", lambda self, **kw: loads.append(kw))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        rc = cli_main(["keyboard", "--data-dir", str(tmp_path), "--model", str(exported_version), "--port", str(port)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"error: port {port} on 127.0.0.1 is in use by another program: choose another "
                               "(--port for `keyboard`, --keyboard-port for `run`)"), err
    assert loads == []


# --- logs ---------------------------------------------------------------------------------------

def test_log_lines_carry_no_typed_text(server, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    # This test's own HTTP client logs the URLs it requests at DEBUG; that is the client, not the
    # keyboard server, and an earlier test may have routed it to stderr.
    monkeypatch.setattr(logging.getLogger("urllib3"), "level", logging.WARNING)
    post(server, "api/suggest", {"client": "a", "text": SECRET})
    post(server, "api/commit", {"text": SECRET + ".", "field_kind": "message"})
    post(server, "api/commit", {"text": SECRET, "field_kind": "message", "private": True})
    post(server, "api/suggest", "{" + SECRET)                                   # bad JSON
    requests.get(server.url + "api/status?q=" + SECRET.replace(" ", "+"), timeout=5)
    requests.get(server.url + SECRET.replace(" ", "/"), timeout=5)               # unknown path
    with socket.create_connection((server.host, server.port), timeout=5) as sock:   # a malformed request line
        sock.sendall(f"GET /{SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("edge_runtime")]  # the server's
    out = capfd.readouterr()
    assert any("POST /api/suggest 200" in m for m in lines) and any("POST /api/suggest 400" in m for m in lines)
    # a line a keystroke, with its time, is the typing's rhythm: not in the default (INFO) log
    assert not [r for r in caplog.records if "/api/suggest 200" in r.getMessage() and r.levelno >= logging.INFO]
    assert any("GET <other> 404" in m for m in lines)
    for word in SECRET.split():
        assert not any(word in m for m in lines), "typed text in a log line"
        assert word not in out.err and word not in out.out


# --- the model in use ---------------------------------------------------------------------------

def test_device_without_a_model_still_caches(tmp_path, caplog):
    with start_keyboard(tmp_path) as s:
        assert "no model version in" in caplog.text     # the empty strip says why, once, at start
        assert post(s, "api/suggest", {"client": "a", "text": "hello "}).json() == {"suggestions": [],
                                                                                    "version_id": None}
        st = post(s, "api/commit", {"text": "Hello there.", "field_kind": "message"}).json()
        assert st["cached"] and st["model"] == {"version_id": None, "channel": "unknown"}


def test_the_versions_licence_notices_are_served_for_the_page(tmp_path, exported_version):
    notice = "CC BY-SA 4.0: word frequencies from Someone (2022) <b>not markup</b>"
    version = with_notices(exported_version, tmp_path / "v", {TOKENIZER: notice})
    with start_keyboard(tmp_path / "device", model_dir=version) as s:
        r = requests.get(s.url + "api/notices", timeout=5)
        assert r.status_code == 200 and r.json() == {"version_id": read_manifest(version).version_id,
                                                     "notices": [{"file": TOKENIZER, "text": notice}]}
        assert post(s, "api/notices", {}).status_code == 405
    with start_keyboard(tmp_path / "bare") as s:   # no model yet: nothing to credit, no error
        assert requests.get(s.url + "api/notices", timeout=5).json() == {"version_id": None, "notices": []}


def test_follows_the_device_current_version_and_its_channel(tmp_path, exported_version, monkeypatch):
    monkeypatch.setattr(model_slot, "MODEL_CHECK_S", 0.0)
    vid = read_manifest(exported_version).version_id
    loads = []
    slot = ModelSlot(data_dir=tmp_path, model_dir=None, channel=None,
                     loader=lambda d: loads.append(d) or model_slot.load_predictor(d))
    slot.refresh()
    assert slot.predictor is None and slot.version_id is None
    VersionStore(tmp_path).install(vid, directory_fetch(exported_version))
    slot.refresh()
    assert slot.version_id == vid and slot.channel == "unknown" and len(loads) == 1
    evaluate = wire.Task(kind=wire.TASK_EVALUATE, retry_after=1.0, use_version_id=vid, candidate_version_id=vid,
                         evaluate_version_ids=(vid, "stable1"))
    assert channel.record_channel(tmp_path, evaluate, vid) == "canary" and slot.channel == "canary"
    slot.refresh()
    assert len(loads) == 1   # same version: not reloaded


def _gated_keyboard(tmp_path, exported_version, monkeypatch):
    """A keyboard on version tiny-a whose loader waits for `gate` whenever it loads anything after it."""
    from edge_runtime.cache import TextCache
    from edge_runtime.keyboard_app import KeyboardApp
    from tests.helpers.versions import renamed

    monkeypatch.setattr(model_slot, "MODEL_CHECK_S", 0.0)
    data, gate, loads = tmp_path / "device", threading.Event(), []
    VersionStore(data).install("tiny-a", directory_fetch(renamed(exported_version, tmp_path / "tiny-a", "tiny-a")))

    def loader(version_dir, *weights):
        loads.append((version_dir.name, bool(weights)))
        if len(loads) > 1:
            assert gate.wait(30)
        return model_slot.load_predictor(version_dir, *weights)

    slot = ModelSlot(data_dir=data, model_dir=None, channel=None, loader=loader)
    app = KeyboardApp(cache=TextCache(data), slot=slot)
    assert app.suggest({"client": "t", "text": "the "})["version_id"] == "tiny-a"
    return data, gate, loads, slot, app


def _loading_the_users_copy(tmp_path, exported_version, monkeypatch):
    """`_gated_keyboard` with a copy of tiny-a's weights as the user's own, which a keystroke has
    begun to load on the slot's thread (held at the gate, which the caller opens)."""
    from edge_runtime import personal_copy
    from protocol.artifact import load_version

    data, gate, loads, slot, app = _gated_keyboard(tmp_path, exported_version, monkeypatch)
    personal_copy.save(data, "tiny-a", load_version(data / "models" / "tiny-a")[1], "1:1:x")
    app.suggest({"client": "t", "text": "the c"})   # sees the copy: loads it on a thread
    _until(lambda: len(loads) == 2)   # the thread reaches the loader
    if loads[-1] != ("tiny-a", True):
        gate.set()
        raise AssertionError(loads)
    return data, gate, slot, app


def test_a_keystroke_does_not_wait_for_a_new_version_to_load(tmp_path, exported_version, monkeypatch):
    """The keystroke that first saw a new version loaded it under the slot's lock: every strip
    waited 0.07-0.4 s on x86 (0.2-1 s over a long run), more on a Pi. It now loads on a thread, and
    the strip comes from the version in use until the new one is in."""
    from tests.helpers.versions import renamed

    data, gate, loads, slot, app = _gated_keyboard(tmp_path, exported_version, monkeypatch)
    try:
        VersionStore(data).install("tiny-b", directory_fetch(renamed(exported_version, tmp_path / "tiny-b", "tiny-b")))
        answers: list[dict] = []
        t = threading.Thread(target=lambda: answers.append(app.suggest({"client": "t", "text": "the c"})))
        t.start()
        t.join(5)
        assert answers and answers[0]["version_id"] == "tiny-a"   # answered while tiny-b loads
        _until(lambda: len(loads) == 2)   # the thread reaches the loader (busy machines take a while)
        assert loads[-1] == ("tiny-b", False) and app.status()["model"]["version_id"] == "tiny-a"
    finally:
        gate.set()
    slot._loading.join(30)
    assert app.suggest({"client": "t", "text": "the ca"})["version_id"] == "tiny-b"
    assert slot.predictor.session().update("the c", k=3) and len(loads) == 2


def test_a_wipe_during_a_load_keeps_the_users_copy_out(tmp_path, exported_version, monkeypatch):
    """A load on the keystroke's thread may be reading the user's own LSTM copy when a wipe deletes
    it: what it loaded must not be swapped in after the wipe."""
    data, gate, slot, app = _loading_the_users_copy(tmp_path, exported_version, monkeypatch)
    try:
        wipe = threading.Thread(target=slot.forget_personal)   # waits for the load under way
        wipe.start()
        time.sleep(0.2)
    finally:
        gate.set()
    wipe.join(30)
    slot._loading.join(30)
    assert not slot.personal and not (data / PERSONAL_DIR).exists()
    assert app.suggest({"client": "t", "text": "the ca"})["version_id"] == "tiny-a" and not slot.personal


def test_the_text_being_typed_is_fed_through_a_new_version_before_it_goes_in(tmp_path, exported_version,
                                                                            monkeypatch):
    """With the load off the keystroke, the first keystroke on a new version still fed the whole
    text being typed through it (0.85 s for the page's 16,384 characters on x86). The thread that
    loads the version now feeds it first, into a session the swap hands to the client."""
    from tests.helpers.versions import renamed

    monkeypatch.setattr(model_slot, "MODEL_CHECK_S", 0.0)
    data = tmp_path / "device"
    VersionStore(data).install("tiny-a", directory_fetch(renamed(exported_version, tmp_path / "tiny-a", "tiny-a")))
    text = "we should go to the park if the weather is good and then " * 20 + "the c"
    with start_keyboard(data) as s:
        def strip(t: str) -> dict:
            r = post(s, "api/suggest", {"client": "long", "text": t})
            assert r.status_code == 200, r.text
            return r.json()

        assert strip(text)["version_id"] == "tiny-a"
        VersionStore(data).install("tiny-b",
                                   directory_fetch(renamed(exported_version, tmp_path / "tiny-b", "tiny-b")))
        strip(text + "a")   # sees tiny-b: loads it on a thread, this strip from tiny-a
        slot = s.app.slot
        slot._loading.join(30)
        assert slot.version_id == "tiny-b"
        assert s._server.idle.wait()
        s.app.prefetch("long")   # idle work readies nothing on it: where the user types is not known yet
        warmed = s.app._sessions["long"][1]
        assert warmed.text is None and warmed.readied is None and warmed.firsts is None
        steps = []
        real = slot.predictor.advance_ids
        monkeypatch.setattr(slot.predictor, "advance_ids", lambda *a: steps.append(1) or real(*a))
        assert strip(text + "ar")["version_id"] == "tiny-b"
        assert len(steps) <= 1, len(steps)   # fed in idle time: at most the chunk being typed
        gen, session = s.app._sessions["long"]
        assert gen == slot.generation and len(session.chunks) == len(text.split()) - 1


def test_status_answers_the_version_a_load_under_way_brings_with_its_channel(tmp_path, exported_version,
                                                                            monkeypatch):
    """With the load on a thread, status answered the old version at once while the device's
    channel record already named the new one: the page's badge read "not checked in" for the
    seconds each new version loaded (a quarter of the time). Status waits for the load,
    outside the lock, so keystrokes go on."""
    from tests.helpers.versions import renamed

    data, gate, loads, slot, app = _gated_keyboard(tmp_path, exported_version, monkeypatch)
    VersionStore(data).install("tiny-b", directory_fetch(renamed(exported_version, tmp_path / "tiny-b", "tiny-b")))
    evaluate = wire.Task(kind=wire.TASK_EVALUATE, retry_after=1.0, use_version_id="tiny-b",
                         candidate_version_id="tiny-b", evaluate_version_ids=("tiny-b", "tiny-a"))
    assert channel.record_channel(data, evaluate, "tiny-b") == "canary"
    answers: list[dict] = []
    try:
        app.suggest({"client": "t", "text": "the c"})   # starts the load, held at the gate
        _until(lambda: len(loads) == 2)
        asking = threading.Thread(target=lambda: answers.append(app.status()))
        asking.start()
        asking.join(0.5)
        assert not answers   # waiting for the load
        assert app.suggest({"client": "t", "text": "the ca"})["version_id"] == "tiny-a"   # keystrokes go on
    finally:
        gate.set()
    asking.join(30)
    assert answers[0]["model"] == {"version_id": "tiny-b", "channel": "canary"}


def test_a_users_copy_deleted_by_a_wipe_elsewhere_during_a_load_is_not_put_in_use(tmp_path, exported_version,
                                                                                  monkeypatch):
    """`python -m edge_runtime wipe` in another process deletes the user's own LSTM copy before
    this process notices the wipe: a load that read the copy before was swapped in and suggested
    from the wiped text's weights until then."""
    from edge_runtime import personal_copy

    data, gate, slot, app = _loading_the_users_copy(tmp_path, exported_version, monkeypatch)
    try:
        personal_copy.forget(data)   # the wipe elsewhere, not noticed here yet
    finally:
        gate.set()
    slot._loading.join(30)
    assert not slot.personal


def test_text_the_keyboard_dropped_does_not_come_back_with_a_new_version(tmp_path, exported_version, monkeypatch):
    """The thread feeds the text being typed through a new version before the swap: text the
    keyboard dropped meanwhile (a wipe elsewhere; the cache unreadable at start) came back in the
    swapped-in sessions. Dropping it now drops the load under way too."""
    from tests.helpers.versions import renamed

    data, gate, loads, slot, app = _gated_keyboard(tmp_path, exported_version, monkeypatch)
    gate.set()
    app.suggest({"client": "c", "text": "my bank password is hunter2 and my pin "})

    class DroppedMeanwhile:
        dropped = False

        def warm(self, predictor):
            out = app._warm(predictor)
            if not self.dropped:
                self.dropped = True
                app._drop_memory()
                app.suggest({"client": "c", "text": ""})   # the emptied field's keystroke
            return out

        def swapped(self, warmed):
            app._swapped(warmed)

    hooks = DroppedMeanwhile()
    slot.follow(hooks.warm, hooks.swapped)
    VersionStore(data).install("tiny-b", directory_fetch(renamed(exported_version, tmp_path / "tiny-b", "tiny-b")))
    app.suggest({"client": "x", "text": "hi"})
    slot._loading.join(30)
    _, session = app._sessions["c"]
    assert "hunter2" not in session.chunks and not session.undone
    app.suggest({"client": "x", "text": "hi"})   # the next look-up loads it again
    slot._loading.join(30)
    assert slot.version_id == "tiny-b"


def test_a_version_that_fails_to_load_is_not_loaded_again_at_every_look_up(tmp_path, exported_version, monkeypatch,
                                                                         caplog):
    """A version whose load failed on the thread was loaded again at every look-up (every 2 s; a
    second of CPU on a Pi each time) and logged once: now it is left for RETRY_FAILED_S."""
    from protocol.artifact import ArtifactError
    from tests.helpers.versions import renamed

    data, gate, loads, slot, app = _gated_keyboard(tmp_path, exported_version, monkeypatch)
    gate.set()
    real = slot._loader

    def broken_b(version_dir, *weights):
        if version_dir.name == "tiny-b":
            loads.append(("tiny-b", "failed"))
            raise ArtifactError("tiny-b: weights.safetensors is damaged")
        return real(version_dir, *weights)

    slot._loader = broken_b
    VersionStore(data).install("tiny-b", directory_fetch(renamed(exported_version, tmp_path / "tiny-b", "tiny-b")))
    for _ in range(10):
        assert app.suggest({"client": "t", "text": "the c"})["version_id"] == "tiny-a"
        slot._loading.join(30)
    assert loads.count(("tiny-b", "failed")) == 1
    said = [r.getMessage() for r in caplog.records if "could not be loaded" in r.getMessage()]
    assert len(said) == 1 and "suggesting with tiny-a meanwhile, trying again every 30 s" in said[0]
    monkeypatch.setattr(model_slot, "RETRY_FAILED_S", 0)
    slot._failed = (*slot._failed[:2], 0.0)   # its time to try again has come
    app.suggest({"client": "t", "text": "the c"})
    slot._loading.join(30)
    assert loads.count(("tiny-b", "failed")) == 2


def test_channel_from_tasks(tmp_path):
    come_back = wire.Task(kind=wire.TASK_COME_BACK, retry_after=1.0, use_version_id="v2")
    assert channel.channel_of(come_back) is None
    assert channel.record_channel(tmp_path, come_back, "v2") == "unknown"
    ev = wire.Task(kind=wire.TASK_EVALUATE, retry_after=1.0, use_version_id="v2", candidate_version_id="c3",
                   evaluate_version_ids=("c3", "v2"))
    assert channel.record_channel(tmp_path, ev, "v2") == "stable"
    assert channel.record_channel(tmp_path, come_back, "v2") == "stable"    # nothing new: the last answer
    assert channel.read_channel(tmp_path, "v9") == "unknown"               # another version: unknown
    failed = wire.Task(kind=wire.TASK_EVALUATE, retry_after=1.0, use_version_id="c3", candidate_version_id="c3",
                       evaluate_version_ids=("c3", "v2"))
    assert channel.record_channel(tmp_path, failed, "v2") == "stable"       # download failed: still v2


def test_serve_keyboard_blocks_until_stop(tmp_path):
    stop, urls = threading.Event(), []
    t = threading.Thread(target=keyboard.serve_keyboard, args=(tmp_path,),
                         kwargs={"stop": stop, "on_ready": urls.append})
    t.start()
    for _ in range(100):
        if urls:
            break
        time.sleep(0.05)
    assert requests.get(urls[0] + "api/status", timeout=5).status_code == 200
    stop.set()
    t.join(10)
    assert not t.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(urls[0] + "api/status", timeout=2)
    assert (tmp_path / CACHE_DB).exists()


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_every_bind_checks_host_origin_and_session_token(tmp_path, bind):
    """Failed on the old code: bound to 0.0.0.0 it switched its Host and Origin checks off, and no
    call needed a token, so any local process (or a rebinding page) could commit, wipe or unpause."""
    from edge_runtime.keyboard import start_keyboard

    with start_keyboard(tmp_path / "dev", host=bind, allow_remote=bind != "127.0.0.1") as srv:
        assert srv.page_url == f"{srv.url}#token={srv.token}" and len(srv.token) >= 32
        base = f"http://127.0.0.1:{srv.port}/"

        def call(route, body, **headers):
            return requests.post(base + route, json=body, headers=headers, timeout=5)

        assert call("api/pause", {"paused": True}).json()["error"] == "bad_token"             # no token
        assert call("api/pause", {"paused": True}, **{"X-Keyboard-Token": "x" * 32}).status_code == 403
        good = {"X-Keyboard-Token": srv.token}
        assert call("api/commit", {"text": "zq sneaky", "field_kind": "message"}, **good,
                    Origin="http://evil.example").json()["error"] == "forbidden_origin"
        r = requests.get(base + "api/status", headers={"Host": f"rebind.evil.example:{srv.port}"}, timeout=5)
        assert r.status_code == 421
        assert call("api/pause", {"paused": True}, **good, Origin=f"http://127.0.0.1:{srv.port}").status_code == 200
        assert call("api/commit", {"text": "hello there", "field_kind": "message"}, **good).status_code == 200


@pytest.mark.parametrize("raw", [b"[" * 30000 + b"]" * 30000,
                                 b'{"text": "\\ud800 hi", "field_kind": "message"}'])
def test_nested_or_invalid_unicode_bodies_are_400_not_500(server, raw):
    r = post(server, "api/commit", raw)
    assert r.status_code == 400 and r.json()["error"] == "bad_json", r.text


def test_committed_words_come_back_as_suggestions_and_clear_forgets_them(server):
    """The personal model learns from what the user commits (on the device only); wipe forgets."""
    def strip(text: str) -> list[str]:
        return post(server, "api/suggest", {"client": "t1", "text": text}).json()["suggestions"]

    assert "Quokkaville" not in strip("we met in Quok")
    for _ in range(2):
        r = post(server, "api/commit", {"text": "we met in Quokkaville at dawn", "field_kind": "message"})
        assert r.json()["cached"] is True
    assert strip("we met in Quok")[0] == "Quokkaville"
    from edge_runtime.personal import MIX_PRIOR
    personal = server.app.slot.predictor.personal   # the commits also taught the mixture weights
    assert personal.mix[2] - MIX_PRIOR[2] > 2 and server.app.slot.predictor.weights()[2] > 0
    post(server, "api/pause", {"paused": True})
    post(server, "api/commit", {"text": "Wombatshire is lovely", "field_kind": "message"})
    assert "Wombatshire" not in strip("Wom")  # paused: neither cached nor learned
    post(server, "api/pause", {"paused": False})
    post(server, "api/clear", {})
    assert "Quokkaville" not in strip("we met in Quok")


def test_a_removed_word_is_not_suggested_until_typed_again_and_a_restart_keeps_it(tmp_path, exported_version):
    """A keyboard learns what the user types, typos too: a word removed from the strip is offered by
    no part (the user's own words, the word list, the text being typed), also after the strip was
    readied between keystrokes and after a restart, until the user commits it again; a wipe forgets
    the removal with the text it came from."""
    def strip(s, text: str, client: str = "t1") -> list[str]:
        return post(s, "api/suggest", {"client": client, "text": text}).json()["suggestions"]

    device = tmp_path / "device"
    with start_keyboard(device, model_dir=exported_version) as s:
        for _ in range(3):
            assert post(s, "api/commit", {"text": "Teh cat sat on teh mat.", "field_kind": "message"}).json()["cached"]
        assert "teh" in strip(s, "I saw te") and "Teh" in strip(s, "Te")
        done = s._server.idle.done
        listed = strip(s, "I saw th")[0]                 # a word-list word, for the list's part
        assert s._server.idle.wait(after=done)           # strips readied between keystrokes
        r = post(s, "api/remove-word", {"word": "teh"})
        assert r.status_code == 200 and r.json()["removed"] == "teh"
        assert post(s, "api/remove-word", {"word": listed}).status_code == 200
        for text in ("I saw te", "I saw teh cat and te", "I saw "):   # the text's own words too
            assert "teh" not in strip(s, text) and listed not in strip(s, text), text
        assert listed not in strip(s, "I saw th", client="t2")
        for body in ({"word": "two words"}, {"word": ""}, {"word": " teh"}, {}, {"word": "teh", "undo": "yes"}):
            assert post(s, "api/remove-word", body).status_code == 400, body
        # the page's Undo takes a removal back, at once
        other = strip(s, "I saw th")[0]
        assert post(s, "api/remove-word", {"word": other}).status_code == 200 and other not in strip(s, "I saw th")
        r = post(s, "api/remove-word", {"word": other, "undo": True})
        assert r.status_code == 200 and r.json()["restored"] == other and other in strip(s, "I saw th")
        assert post(s, "api/remove-word", {"word": other, "undo": True}).status_code == 200   # twice: no-op
    with start_keyboard(device, model_dir=exported_version) as s:     # a restart keeps the removal
        assert "teh" not in strip(s, "I saw te") and "Teh" not in strip(s, "Te")   # its sentence-start form too
        # The sentence it was removed from, finished and committed, does not bring it back ...
        assert post(s, "api/commit", {"text": "I saw teh cat.", "field_kind": "message"}).json()["cached"]
        assert "teh" not in strip(s, "I saw te")
        # ... a second text with it does: the user keeps typing it.
        assert post(s, "api/commit", {"text": "teh is how I spell it.", "field_kind": "message"}).json()["cached"]
        assert "teh" in strip(s, "I saw te")
        assert listed not in strip(s, "I saw th")
        # Smart punctuation's apostrophe is kept as typed text counts it, so typing "Teh's" brings it back.
        r = post(s, "api/remove-word", {"word": "Teh\u2019s"})
        assert r.json()["removed"] == "Teh\u2019s" and "Teh's" in s.app.cache.removed_words()
        post(s, "api/clear", {})
        assert s.app.cache.removed_words() == frozenset()             # wiped with the text it came from


def test_removed_words_race_no_wipe_and_expire_with_the_text(tmp_path, monkeypatch):
    from edge_runtime import cache as cache_mod
    from edge_runtime.cache import TextCache

    c = TextCache(tmp_path, retention_days=1)
    mark = c.wipe_mark()
    assert c.change_removed(mark=mark, add="teh") == {"teh"}
    new_mark = c.wipe()
    # A removal that looked before the wipe must not write its words back after it.
    assert c.change_removed(mark=mark, add="quokka") is None and c.removed_words() == frozenset()
    assert c.change_removed(mark=new_mark, add="quokka") == {"quokka"}
    long_ago = cache_mod.time.time() - 3 * 86400
    monkeypatch.setattr(cache_mod.time, "time", lambda: long_ago)     # removed long ago (a clock that was set)
    c.change_removed(mark=new_mark, add="old")
    monkeypatch.undo()
    c.enforce_retention()
    assert c.removed_words() == {"quokka"}                            # kept no longer than the text
    assert c.change_removed(mark=new_mark, back="quokka") == frozenset() == c.removed_words()   # undone
    assert c.change_removed(mark=mark, back="teh") is None            # an undo racing a wipe writes nothing
    c._db.execute("UPDATE settings SET value = 'not json' WHERE key = ?", (cache_mod.REMOVED_KEY,))
    assert c.removed_words() == frozenset()                           # a damaged record: empty, no error
    c.close()


def test_the_block_on_offensive_words_is_a_device_setting(tmp_path, exported_version):
    # On by default; `block_offensive` (FEDKEYS_EDGE_BLOCK_OFFENSIVE) reaches the keyboard's predictor.
    from edge_runtime.config import load_config

    with start_keyboard(tmp_path / "d1", model_dir=exported_version) as s:
        assert s.app.slot.predictor.block_offensive is True
    config = load_config(environ={"FEDKEYS_EDGE_BLOCK_OFFENSIVE": "false",
                                  "FEDKEYS_EDGE_DATA_DIR": str(tmp_path / "d2")})
    assert config.block_offensive is False
    with start_keyboard(tmp_path / "d2", model_dir=exported_version, config=config) as s:
        assert s.app.slot.predictor.block_offensive is False


def learned_a_name(server):
    """Two commits teach the running keyboard "Quokkaville"; returns its strip for a text."""
    def strip(text: str) -> list[str]:
        return post(server, "api/suggest", {"client": "t1", "text": text}).json()["suggestions"]

    for _ in range(2):
        assert post(server, "api/commit", {"text": "we met in Quokkaville at dawn",
                                           "field_kind": "message"}).json()["cached"] is True
    assert strip("we met in Quok")[0] == "Quokkaville"
    return strip


def test_a_wipe_from_the_command_line_is_seen_by_the_running_keyboard(server, monkeypatch):
    """`python -m edge_runtime wipe` while the keyboard served said "wiped", and the keyboard went
    on suggesting the user's words from memory (only the page's own clear forgot them)."""
    from edge_runtime.__main__ import main as device_main

    strip = learned_a_name(server)
    assert device_main(["wipe", "--data-dir", str(server.app.cache.data_dir)]) == 0     # another process's wipe
    assert db_rows(server) == []
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)   # keystrokes look at once, not in 1 s
    assert "Quokkaville" not in strip("we met in Quok")
    assert server.app.personal().uni["Quokkaville"] == 0
    # A commit after it learns into fresh words; the page's own clear is not mistaken for another's.
    assert post(server, "api/commit", {"text": "Wombatshire is lovely", "field_kind": "message"}).json()["cached"]
    assert strip("Womb")[0] == "Wombatshire"
    assert post(server, "api/clear", {}).json()["cache"]["sentences"] == 0
    assert "Wombatshire" not in strip("Womb")


def looked_again(server) -> None:
    """A status poll (the page's, every few seconds) and the idle work it leaves: texts other
    processes cached are learned there."""
    done = server._server.idle.done
    assert requests.get(server.url + "api/status", timeout=10).status_code == 200
    assert server._server.idle.wait(after=done)


def test_text_typed_from_the_command_line_is_learned_by_the_running_keyboard(server, monkeypatch):
    """`python -m edge_runtime type` while the keyboard served cached the text, but the keyboard
    built the user's words from the cache only at start: the word was not suggested until a
    restart. Its own commits are not counted twice."""
    from edge_runtime.__main__ import main as device_main

    strip = learned_a_name(server)
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)   # keystrokes look at once, not in 1 s
    data_dir = str(server.app.cache.data_dir)
    for _ in range(2):   # another process: its own connection to the cache
        assert device_main(["type", "--data-dir", data_dir, "--field-kind", "message",
                            "the ferry to Zanzibarville leaves at dawn"]) == 0
    looked_again(server)
    assert strip("the ferry to Zanz")[0] == "Zanzibarville"
    words = server.app.personal()
    assert words.uni["Zanzibarville"] == 2 and words.uni["Quokkaville"] == 2   # each text counted once
    assert post(server, "api/commit", {"text": "Quokkaville again", "field_kind": "message"}).json()["cached"]
    looked_again(server)
    assert words.uni["Quokkaville"] == 3 and words is server.app.personal()


def test_texts_the_cache_deleted_leave_the_running_keyboards_words(server, monkeypatch):
    """A keyboard running for months kept every text ever typed in its user's words: a sentence
    the cache had deleted (over its size cap, or 60 days old) was still offered from memory, and
    memory grew with every text. Once the cache's oldest text is
    newer than what the words counted, they are counted again from the cache; the mixture's
    evidence stays."""

    strip = learned_a_name(server)
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)
    looked_again(server)
    assert strip("we met in Quok")[0] == "Quokkaville"   # nothing deleted: nothing counted again
    before = server.app.personal()
    monkeypatch.setattr(server.app.cache, "max_bytes", 100)
    for _ in range(3):
        assert post(server, "api/commit", {"text": "see you at the station tonight",
                                           "field_kind": "message"}).json()["cached"] is True
    assert not [t for t in db_rows(server) if "Quokkaville" in t] and db_rows(server)
    looked_again(server)
    assert server.app.personal() is before   # at most every REBUILD_EVERY_S
    monkeypatch.setattr(user_words, "REBUILD_EVERY_S", 0.0, raising=False)
    looked_again(server)
    words = server.app.personal()
    assert words is not before and words.uni["Quokkaville"] == 0 and words.uni["station"] == len(db_rows(server))
    assert words.mix == before.mix and words.mix_by_seen == before.mix_by_seen
    assert "Quokkaville" not in strip("we met in Quok")
    monkeypatch.setattr(server.app.cache, "max_bytes", 10_000)   # nothing deleted: its own commit counted once
    assert post(server, "api/commit", {"text": "the station again", "field_kind": "message"}).json()["cached"]
    looked_again(server)
    assert server.app.personal() is words and words.uni["station"] == len(db_rows(server))
    # a text typed while the clock ran two months behind is the newest and past the retention:
    # deleted whatever its id, it leaves the words too
    assert server.app.cache.add("a trip to Wallabyville", "message", ts=time.time() - 90 * 86400)
    looked_again(server)
    assert server.app.personal().uni["Wallabyville"] == 1
    assert server.app.cache.enforce_retention() == 1
    looked_again(server)
    assert server.app.personal().uni["Wallabyville"] == 0 and server.app.personal().uni["station"] == 4


def test_a_removed_word_typed_from_the_command_line_comes_back_as_one_committed_on_the_page(server, monkeypatch):
    """A removed word returns once committed in TYPED_TO_RETURN texts; `type` did not count them."""
    from edge_runtime.__main__ import main as device_main
    from edge_runtime.cache import TYPED_TO_RETURN

    strip = learned_a_name(server)
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)
    assert post(server, "api/remove-word", {"word": "Quokkaville"}).status_code == 200
    assert "Quokkaville" not in strip("we met in Quok")
    for n in range(TYPED_TO_RETURN):
        assert ("Quokkaville" in strip("we met in Quok")) is False, n
        assert device_main(["type", "--data-dir", str(server.app.cache.data_dir), "--field-kind", "message",
                            "back to Quokkaville"]) == 0
        looked_again(server)
    assert strip("we met in Quok")[0] == "Quokkaville"


def test_a_word_another_keyboard_on_the_device_removed_is_hidden_here_too(server, monkeypatch):
    """Two keyboards on one data directory (`run --keyboard-port` and `keyboard`): a word removed
    in one was still suggested by the other, which read the removed words only at its own
    changes."""
    from edge_runtime.cache import TextCache

    strip = learned_a_name(server)
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)
    with TextCache(server.app.cache.data_dir) as other:   # the other keyboard's own connection
        assert other.change_removed(mark=other.wipe_mark(), add="Quokkaville") is not None
    looked_again(server)
    assert "Quokkaville" not in strip("we met in Quok")


def test_a_removed_word_brought_back_by_type_is_seen_by_a_keystroke_between_its_store_and_its_count(server,
                                                                                                  monkeypatch):
    """`type` stored its text and counted the removed words in it in two transactions: a keyboard
    that learned the text between them read the removed words before the count, and hid the word
    the cache had brought back until its next commit. One transaction now."""
    from edge_runtime.__main__ import main as device_main
    from edge_runtime.cache import TYPED_TO_RETURN, TextCache

    strip = learned_a_name(server)
    app = server.app
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)
    assert post(server, "api/remove-word", {"word": "Quokkaville"}).status_code == 200
    data_dir = str(app.cache.data_dir)
    for _ in range(TYPED_TO_RETURN - 1):
        assert device_main(["type", "--data-dir", data_dir, "--field-kind", "message", "back to Quokkaville"]) == 0
        strip("we")
    real_add = TextCache.add

    def keyboard_looks_after(self, *a, **kw):   # the keyboard looks as soon as `type` has stored
        out = real_add(self, *a, **kw)
        if self is not app.cache:
            looked_again(server)
        return out

    monkeypatch.setattr(TextCache, "add", keyboard_looks_after)
    assert device_main(["type", "--data-dir", data_dir, "--field-kind", "message", "back to Quokkaville"]) == 0
    monkeypatch.setattr(TextCache, "add", real_add)
    assert "Quokkaville" not in app.cache.removed_words()
    assert "Quokkaville" in strip("we met in Quok")


def test_a_stopped_keyboard_is_freed_with_its_model(tmp_path, exported_version):
    """The slot held the keyboard's hooks and the keyboard the slot: a cycle, which the freeze that
    follows building the user's words (`collector.settle`) kept, so a stopped keyboard kept its
    interpreter."""
    import gc
    import weakref

    with start_keyboard(tmp_path / "device", model_dir=exported_version) as s:
        assert post(s, "api/suggest", {"client": "c", "text": "the "}).status_code == 200   # builds the words
        assert s._server.idle.wait()
        app, predictor = weakref.ref(s.app), weakref.ref(s.app.slot.predictor)
    del s
    gc.collect()
    assert predictor() is None and app() is None


def test_a_text_typed_after_a_wipe_that_met_a_commit_is_still_learned(server, monkeypatch):
    """A wipe starts the cache's ids again from 1. The id of a commit that a wipe elsewhere met
    stayed marked as this keyboard's own, and the text `type` later stored under that id was taken
    for it and never learned."""
    from edge_runtime.__main__ import main as device_main

    strip = learned_a_name(server)
    app = server.app
    data_dir = str(app.cache.data_dir)
    real = app._typed_again

    def wipe_lands_now(text):   # `python -m edge_runtime wipe` while this commit is under way
        real(text)
        assert device_main(["wipe", "--data-dir", data_dir]) == 0

    monkeypatch.setattr(app, "_typed_again", wipe_lands_now)
    assert post(server, "api/commit", {"text": "one more line", "field_kind": "message"}).json()["cached"]
    monkeypatch.setattr(app, "_typed_again", real)
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)
    strip("we")
    for _ in range(3):
        assert device_main(["type", "--data-dir", data_dir, "--field-kind", "message",
                            "the ferry to Zanzibarville leaves at dawn"]) == 0
    looked_again(server)
    assert app.personal().uni["Zanzibarville"] == 3 and app.personal().uni["Quokkaville"] == 0


def test_the_users_words_are_built_from_one_read_of_the_cache(server, monkeypatch):
    """They were built from two reads (the training part, then the held-out part): a text `type`
    stored between them moved the boundary, and the text that crossed it was in neither read and,
    older than the newest one read, never learned."""
    from edge_runtime.cache import TextCache

    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)
    app, cache = server.app, server.app.cache
    for i in range(11):
        assert cache.add("Wombatshire is where we live" if i == 9 else f"plain filler line {i}", "message")
    real = cache.texts_after

    def type_elsewhere_meanwhile(text_id):
        out = real(text_id)
        with TextCache(cache.data_dir) as other:   # `python -m edge_runtime type` right after the read
            assert other.add("the ferry leaves at dawn", "message")
        return out

    with app.slot.lock:
        app._personal = None
    monkeypatch.setattr(cache, "texts_after", type_elsewhere_meanwhile)
    words = app.personal()
    monkeypatch.setattr(cache, "texts_after", real)
    app._see_outside_texts()
    assert words.uni["Wombatshire"] == 1 and words.uni["ferry"] == 1 and words.uni["filler"] == 10


def test_a_commit_whose_words_were_rebuilt_before_it_was_stored_is_learned(server, monkeypatch):
    """The user's words rebuilt from the cache just before a commit's text is stored lack it, and
    the commit's learn skips words it did not start with: the text was then learned by neither,
    and its id, marked as this keyboard's own, kept the look for other processes' texts off it."""

    app, cache = server.app, server.app.cache
    learned_a_name(server)
    real = cache.add

    def rebuilt_meanwhile(*a, **kw):
        with app.slot.lock:
            app._personal = None
            app.personal()
        return real(*a, **kw)

    monkeypatch.setattr(cache, "add", rebuilt_meanwhile)
    assert post(server, "api/commit", {"text": "Wombatshire is lovely", "field_kind": "message"}).json()["cached"]
    monkeypatch.setattr(cache, "add", real)
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0, raising=False)
    looked_again(server)
    assert app.personal().uni["Wombatshire"] == 1


def test_a_running_keyboard_follows_a_damaged_cache_wipe_run_elsewhere(server, capsys):
    """`wipe` on a cache too damaged to open overwrites and deletes its files and makes a new one,
    paused; the running keyboard kept the old, zeroed file open and failed every commit and status
    ("file is not a database") until it was restarted, and suggested the user's words from memory."""
    from edge_runtime.__main__ import main as device_main
    from edge_runtime.paths import CACHE_DB

    strip = learned_a_name(server)
    data_dir = server.app.cache.data_dir
    for f in data_dir.iterdir():                     # a bad disk under the running keyboard
        if f.name.startswith(CACHE_DB):
            f.write_bytes(b"\xff" * f.stat().st_size)
    assert device_main(["wipe", "--data-dir", str(data_dir)]) == 0     # another process's wipe
    assert "overwritten in place and deleted" in capsys.readouterr().out
    r = requests.get(server.url + "api/status", timeout=5)
    assert r.status_code == 200 and r.json()["cache"]["sentences"] == 0 and r.json()["paused"] is True
    assert "Quokkaville" not in strip("we met in Quok")
    r = post(server, "api/commit", {"text": "Wombatshire is lovely", "field_kind": "message"})
    assert r.status_code == 200 and r.json()["cached"] is False          # paused, as the wipe said
    assert post(server, "api/pause", {"paused": False}).status_code == 200
    assert post(server, "api/commit", {"text": "Wombatshire is lovely", "field_kind": "message"}).json()["cached"]
    assert db_rows(server) == ["Wombatshire is lovely"]
    files = [f for f in data_dir.iterdir() if f.name.startswith(CACHE_DB) or f.name.startswith(".new-cache")]
    assert files and all(f.name.startswith(CACHE_DB) and f.stat().st_mode & 0o077 == 0 for f in files), files


def test_a_request_refused_before_its_body_is_read_does_not_poison_the_connection(server):
    """A POST refused for its token left its body unread on the keep-alive connection, and the next
    request on it was parsed from that body: the page's next keystroke got 501 "Unsupported method
    ('{"client":...}POST')", and its strip went empty instead of saying why."""
    import http.client

    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    body = json.dumps({"client": "c", "text": "good morrow "})
    try:
        conn.request("POST", "/api/suggest", body, {"Content-Type": "application/json"})   # no token
        r = conn.getresponse()
        assert r.status == 403 and json.loads(r.read())["error"] == "bad_token"
        conn.request("POST", "/api/suggest", body, {"Content-Type": "application/json",
                                                    "X-Keyboard-Token": server.token})
        r = conn.getresponse()                 # http.client reconnects if the server closed it
        assert r.status == 200 and "suggestions" in json.loads(r.read())
    finally:
        conn.close()
    # A body nobody reads (a GET's, or a chunked POST's) is not a request either: one answer each.
    import socket

    for head, body in (("GET /api/status HTTP/1.1\r\nContent-Length: 19", "PUT /x HTTP/1.1\r\n\r\n"),
                       ("POST /api/suggest HTTP/1.1\r\nContent-Type: application/json\r\n"
                        f"X-Keyboard-Token: {server.token}\r\nTransfer-Encoding: chunked", "5\r\nhello\r\n0\r\n\r\n")):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(f"{head}\r\nHost: {server.host}:{server.port}\r\n\r\n{body}".encode())
            got = b""
            while chunk := sock.recv(65536):   # the server closes the connection after its answer
                got += chunk
        assert got.count(b"HTTP/1.") == 1 and b"Connection: close" in got, got[:300]


def test_a_connection_reset_by_the_browser_prints_no_traceback(server, capfd):
    """A browser that closes a keep-alive connection hard (a tab closed mid-request) made the
    standard library print 'Exception occurred during processing of request' and a traceback on
    the keyboard's terminal. A client gone is not an error: nothing is printed."""
    import struct
    from urllib.parse import urlparse

    u = urlparse(server.url)
    for partial in (b"", b"POST /api/suggest HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"te"):
        s = socket.create_connection((u.hostname, u.port))
        if partial:
            s.sendall(partial)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close with a reset
        time.sleep(0.1)
        s.close()
    time.sleep(0.5)
    assert requests.get(server.url, timeout=5).status_code == 200                  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


@pytest.mark.parametrize("where", ["past its header", "its header"])
def test_a_damaged_cache_is_503_and_clear_destroys_it(tmp_path, exported_version, where):
    """A bad page in the middle of the file opens fine and fails the first query that reads it:
    status and commit were 500s with tracebacks, and Clear failed too, so the text stayed on disk.
    A damaged header stopped the keyboard from starting at all: no suggestions and no Clear."""
    device = tmp_path / "device"
    db = damaged_cache(device, SECRET)
    if where == "its header":
        with open(db, "r+b") as f:
            f.write(b"\xff" * 16)
    (device / PERSONAL_DIR).mkdir()
    (device / PERSONAL_DIR / "marker").write_text("the personal LSTM")
    with start_keyboard(device, model_dir=exported_version) as server:
        r = requests.get(server.url + "api/status", timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "cache_unavailable", r.text
        assert "damaged" in r.json()["message"] and "Clear" in r.json()["message"]
        for text in ("I pray ", "I pray y"):   # the strip goes on without the user's words
            assert post(server, "api/suggest", {"client": "d", "text": text}).json()["suggestions"]
        assert (device / PERSONAL_DIR / "marker").exists()   # a keystroke drops memory only; Clear deletes
        r = post(server, "api/clear", {})
        assert r.status_code == 200 and r.json()["cache"]["sentences"] == 0 and r.json()["paused"] is True, r.text
        leftovers = b"".join(f.read_bytes() for f in device.iterdir() if f.name.startswith(CACHE_DB))
        assert SECRET.split()[0].encode() not in leftovers and not (device / PERSONAL_DIR).exists()


def test_a_data_directory_gone_leaves_the_strip_working(server, caplog):
    """Suggestions need no file: removing the data directory under a running keyboard made every
    keystroke a 500 (the keystroke time could not be written); the cache's calls say 503, and the
    log says so once, not on every status poll of the open page."""
    import shutil

    shutil.rmtree(server.app.cache.data_dir)
    server.app.activity._written = float("-inf")         # the next keystroke writes the time
    r = post(server, "api/suggest", {"client": "g", "text": "I pray you, "})
    assert r.status_code == 200 and len(r.json()["suggestions"]) == 3, r.text
    with caplog.at_level(logging.WARNING, logger="edge_runtime.keyboard_app"):
        for _ in range(3):
            r = requests.get(server.url + "api/status", timeout=10)
            assert r.status_code == 503 and r.json()["error"] == "cache_unavailable" and "gone" in r.json()["message"]
    said = [r for r in caplog.records if "cannot be used" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def test_malformed_headers_and_numbers_are_4xx_not_500(server):
    r = post(server, "api/suggest", '{"client": "a", "text": "hi", "n": ' + "9" * 5000 + "}")
    assert (r.status_code, r.json()["error"]) == (400, "bad_json")
    r = requests.get(server.url + "api/status", headers={"Host": "[zz"}, timeout=5)
    assert r.status_code == 421
    r = post(server, "api/pause", {"paused": True}, headers={"Origin": "http://["})
    assert (r.status_code, r.json()["error"]) == (403, "forbidden_origin")


def test_a_client_gone_mid_answer_is_no_error_in_the_log(server, caplog, monkeypatch):
    """A closed tab or the page's own timeout resets the connection while the answer is written:
    it was logged as an internal error with a traceback, and counted as a 500."""
    def gone(*_a, **_k):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(keyboard_http.KeyboardHandler, "_json", gone)
    with caplog.at_level(logging.INFO):
        with pytest.raises(requests.RequestException):
            post(server, "api/suggest", {"client": "z", "text": "I pray "})
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_an_internal_error_is_logged_without_its_message(server, caplog, monkeypatch):
    """An unexpected exception's message may quote the text the page sent (a KeyError on a word):
    it was logged with `log.exception`, message and all. Now the type and where, not the words."""
    def broken(body):
        raise ValueError(f"cannot rank {body['text']!r}")

    monkeypatch.setattr(server.app, "suggest", broken)
    with caplog.at_level(logging.DEBUG):
        r = post(server, "api/suggest", {"client": "z", "text": SECRET + " "})
    assert (r.status_code, r.json()["error"]) == (500, "internal"), r.text
    assert "internal error on POST /api/suggest: ValueError" in caplog.text, caplog.text
    assert "in broken" in caplog.text          # where it was raised, at debug
    assert not any(w in caplog.text for w in SECRET.split()), caplog.text


@pytest.mark.parametrize("room", ["for a new cache", "for nothing"])
def test_clear_on_a_full_disk_overwrites_the_text_in_place(server, monkeypatch, room):
    """On a full disk the page's Clear answered 409 and the text stayed on disk: deleting rows
    needs room for the WAL. It overwrites the files in place and deletes them, as the command
    line's wipe does, and learning is paused on the new, empty cache."""
    from edge_runtime.cache import CacheError

    assert post(server, "api/commit", {"text": SECRET, "field_kind": "message"}).json()["cached"] is True

    def full(*a, **kw):
        raise CacheError(f"the text cache at {server.app.cache.path} cannot be used now: database or disk is full")

    monkeypatch.setattr(server.app.cache, "wipe", full)
    if room == "for nothing":   # Clear answered 503 "gone ... try again" although it had wiped
        from edge_runtime import cache as cache_mod
        monkeypatch.setattr(cache_mod, "make_paused", lambda d: (_ for _ in ()).throw(OSError(28, "full")))
    r = post(server, "api/clear", {})
    assert r.status_code == 200 and r.json()["cache"]["sentences"] == 0 and r.json()["paused"] is True, r.text
    device = server.app.cache.data_dir
    leftovers = b"".join(f.read_bytes() for f in device.iterdir() if f.name.startswith(CACHE_DB))
    assert SECRET.split()[0].encode() not in leftovers


def _mark_locked_once(monkeypatch) -> list[int]:
    """The cache's wipe mark unreadable once (the device loop holding the write lock at the
    keyboard's start), then read as usual; the list counts the reads."""
    from edge_runtime.cache import CacheError, TextCache

    real, calls = TextCache.wipe_mark, []

    def locked_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise CacheError("the text cache cannot be used now: database is locked")
        return real(self)

    monkeypatch.setattr(TextCache, "wipe_mark", locked_once)
    return calls


def test_a_cache_locked_at_start_is_no_wipe(tmp_path, exported_version, monkeypatch):
    """A cache that could not be read as the keyboard started (the device loop holding its write
    lock) left the keyboard with no wipe mark; once the cache read again, the mark differed and
    the keyboard took it for a wipe run elsewhere: it deleted the user's personal model."""
    from edge_runtime.cache import TextCache

    device = tmp_path / "device"
    with TextCache(device) as c:
        c.wipe()                                         # cleared once, long ago: the cache has a mark
        c.add("I pray you tell me", "message")
    (device / PERSONAL_DIR).mkdir()
    (device / PERSONAL_DIR / "marker").write_text("the personal LSTM")
    calls = _mark_locked_once(monkeypatch)
    with start_keyboard(device, model_dir=exported_version) as server:
        assert requests.get(server.url + "api/status", timeout=10).status_code == 200
    assert len(calls) >= 2 and (device / PERSONAL_DIR / "marker").exists()


def test_words_read_before_the_first_mark_are_read_again(tmp_path, exported_version, monkeypatch):
    """With the cache unreadable at start, the first mark read was taken as it was; but the user's
    words could be read before it (the idle work at start), and a wipe run in between was then
    never seen: the wiped words kept being suggested (a gap left by the fix above)."""
    from edge_runtime.cache import TextCache

    device = tmp_path / "device"
    with TextCache(device) as c:
        c.add("Zanzibar quokkas abound", "message")
    assert _mark_locked_once(monkeypatch) == []
    with start_keyboard(device, model_dir=exported_version) as server:
        app = server.app
        assert app.personal().uni["Zanzibar"] == 1          # read before any mark was
        with TextCache(device) as other:                    # `python -m edge_runtime wipe` elsewhere
            other.wipe()
        app._see_outside_wipe(now=True)
        assert app.personal().uni["Zanzibar"] == 0


def test_the_device_setting_base_ngram_names_the_keyboards_base_ngram(tmp_path, exported_version, caplog):
    """`base_ngram` (FEDKEYS_EDGE_BASE_NGRAM) is the one way to point a device at another base
    n-gram file or turn it off; a file that is missing is not an error, and the log says so."""
    from edge_runtime.config import load_config
    from edge_runtime.ngram import KneserNeyLM
    from tests.tiny_version import tiny_texts

    mine = tmp_path / "mine.npz"
    KneserNeyLM.fit(tiny_texts(1500) + ["the quick brown horse jumps over the lawful dog"] * 30, order=3).save(mine)

    def strip(setting: str) -> list[str]:
        cfg = load_config(environ={"FEDKEYS_EDGE_BASE_NGRAM": setting})
        with start_keyboard(tmp_path / "device", model_dir=exported_version, config=cfg) as s:
            return post(s, "api/suggest", {"client": "a", "text": "the quick brown "}).json()["suggestions"]

    with_mine, off = strip(str(mine)), strip("off")
    assert with_mine[0] == "horse" and off != with_mine, (with_mine, off)   # only that n-gram knows the phrase
    with caplog.at_level(logging.WARNING):
        assert strip(str(tmp_path / "missing.npz")) == off
    assert "missing.npz not found" in caplog.text
    # The variable it replaced is read as the setting, with a warning: the device unit shipped up to
    # 5 December 2026 sets it, and a refusal restarted every upgraded device every 30 s.
    from edge_runtime.config import ConfigError

    with caplog.at_level(logging.WARNING):
        assert load_config(environ={"FEDKEYS_BASE_NGRAM": ""}).base_ngram == "off"   # "" was none
        assert load_config(environ={"FEDKEYS_BASE_NGRAM": str(mine)}).base_ngram == str(mine)
    assert "FEDKEYS_BASE_NGRAM is read as the base_ngram setting" in caplog.text
    assert load_config(environ={"FEDKEYS_BASE_NGRAM": "off", "FEDKEYS_EDGE_BASE_NGRAM": "off"}).base_ngram == "off"
    with pytest.raises(ConfigError, match="disagree"):
        load_config(environ={"FEDKEYS_BASE_NGRAM": str(mine), "FEDKEYS_EDGE_BASE_NGRAM": "off"})


def _personal_keyboard(tmp_path, exported_version, monkeypatch):
    """A keyboard on version tiny-b (tiny-a installed before it) with the user's own LSTM copy,
    which learned "Quokkaville"; and its strip after "we met in Quok"."""
    from edge_runtime import personal_copy
    from edge_runtime.cache import TextCache
    from edge_runtime.keyboard_app import KeyboardApp
    from protocol.artifact import load_version
    from tests.helpers.versions import renamed

    monkeypatch.setattr(model_slot, "MODEL_CHECK_S", 0.0)
    monkeypatch.setattr(keyboard_app, "WIPE_CHECK_S", 0.0)
    data = tmp_path / "device"
    store = VersionStore(data)
    for vid in ("tiny-a", "tiny-b"):
        store.install(vid, directory_fetch(renamed(exported_version, tmp_path / vid, vid)))
    personal_copy.save(data, "tiny-b", load_version(data / "models" / "tiny-b")[1], "1:1:x")
    cache = TextCache(data)
    slot = ModelSlot(data_dir=data, model_dir=None, channel=None)
    app = KeyboardApp(cache=cache, slot=slot)
    for _ in range(2):
        app.commit({"text": "we met in Quokkaville at dawn", "field_kind": "message"})

    def strip() -> list[str]:
        return app.suggest({"client": "t", "text": "we met in Quok"})["suggestions"]

    assert strip() == ["Quokkaville"] and slot.personal and slot.version_id == "tiny-b"
    # From here only the wipe reloads: a keystroke's look-up on its thread (`refresh(wait=False)`)
    # would see the copy gone and load the global weights before the wipe is noticed.
    monkeypatch.setattr(model_slot, "MODEL_CHECK_S", 3600.0)
    if slot._loading is not None:
        slot._loading.join()
    return data, cache, slot, app, strip


def _wipe_elsewhere(data) -> None:
    """What `python -m edge_runtime wipe` does, in another process."""
    from edge_runtime import personal_copy
    from edge_runtime.cache import TextCache

    personal_copy.forget(data)
    with TextCache(data) as other:
        other.wipe()


def test_a_wipe_whose_model_reload_fails_still_forgets_the_users_words(tmp_path, exported_version, monkeypatch):
    """After `python -m edge_runtime wipe` in another process, the keyboard forgets what it learned
    and reloads the global model. A rollback that pruned the version in use mid-reload failed that
    reload, which skipped the forgetting and recorded the wipe as seen: the wiped words were
    suggested for good. The reload now takes the version in use instead."""
    data, cache, slot, app, strip = _personal_keyboard(tmp_path, exported_version, monkeypatch)
    with cache:
        _wipe_elsewhere(data)
        real = slot._loader

        def rolled_back_mid_load(version_dir, *weights):
            if version_dir.name == "tiny-b":     # the device loop's signed rollback lands meanwhile
                VersionStore(data).activate("tiny-a", abandon=True)
                VersionStore(data).prune()
            return real(version_dir, *weights)

        slot._loader = rolled_back_mid_load
        assert "Quokkaville" not in strip()      # no 500 either: the version in use now is loaded
        assert slot.version_id == "tiny-a" and not slot.personal
        assert "Quokkaville" not in strip() and cache.stats()["records"] == 0


def test_a_keyboard_seeing_a_wipe_elsewhere_deletes_an_update_kept_after_it(tmp_path, exported_version, monkeypatch):
    """A device loop that charged an update before `wipe` ran elsewhere can save it after the wipe
    deleted the kept files. The keyboard noticing the wipe deleted only the personal copy, so the
    update learned from the wiped text stayed on disk until the loop restarted."""
    data, cache, slot, app, strip = _personal_keyboard(tmp_path, exported_version, monkeypatch)
    with cache:
        _wipe_elsewhere(data)
        kept = [data / name for name in (UNSENT_META, UNSENT_DELTA)]   # the loop's save, after the wipe
        for path in kept:
            path.write_bytes(b"{}")
        assert "Quokkaville" not in strip()   # the keyboard sees the wipe
        assert not any(p.exists() for p in kept)


def test_a_wipe_elsewhere_forgets_at_once_while_the_model_cannot_be_reloaded(tmp_path, exported_version,
                                                                            monkeypatch):
    """A reload that keeps failing (a disk error) must not keep what the wipe deleted: the user's
    words and own LSTM copy leave memory at once, and the reload is tried again until it works."""
    from protocol.artifact import ArtifactError

    data, cache, slot, app, strip = _personal_keyboard(tmp_path, exported_version, monkeypatch)
    with cache:
        _wipe_elsewhere(data)
        real, broken = slot._loader, [True]

        def loader(version_dir, *weights):
            if broken[0]:
                raise ArtifactError("an I/O error reading the version")
            return real(version_dir, *weights)

        slot._loader = loader
        app._see_outside_wipe(now=True)          # said in the log, not raised: commits still cache
        assert slot.predictor is None and app._personal is None
        assert app._wipe_mark != cache.wipe_mark()   # not seen yet: tried again
        broken[0] = False
        assert "Quokkaville" not in strip()
        assert app._wipe_mark == cache.wipe_mark() and slot.version_id == "tiny-b" and not slot.personal


def test_two_keyboards_starting_at_once_keep_one_page_key(tmp_path, monkeypatch):
    """`keyboard` and `run --keyboard-port` started together each found no key and each wrote its
    own; the page opened with the one overwritten lost its link at the next restart."""
    from edge_runtime.paths import KEYBOARD_TOKEN_FILE

    tmp_path.mkdir(exist_ok=True)
    real, other = keyboard.secrets.token_urlsafe, "o" * 32

    def meanwhile(n: int) -> str:   # the other process writes its key between our read and our write
        (tmp_path / KEYBOARD_TOKEN_FILE).write_text(other)
        return real(n)

    monkeypatch.setattr(keyboard.secrets, "token_urlsafe", meanwhile)
    assert keyboard._page_token(tmp_path) == other
    monkeypatch.setattr(keyboard.secrets, "token_urlsafe", real)
    assert keyboard._page_token(tmp_path) == other                    # and it stays
    (tmp_path / KEYBOARD_TOKEN_FILE).write_text("damaged")
    mine = keyboard._page_token(tmp_path)
    assert mine != "damaged" and (tmp_path / KEYBOARD_TOKEN_FILE).read_text() == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEYBOARD_TOKEN_FILE]   # no temporary file left


def test_a_connection_left_open_by_a_stopped_keyboard_is_not_told_of_damage(tmp_path, exported_version, caplog):
    """A page's keep-alive connection outlives `stop`: its next call found the cache closed, and
    the answer and the device log called the cache damaged, with `wipe` (which deletes the text)
    as the cure. It is told the keyboard is stopping, and the connection is closed."""
    s = start_keyboard(tmp_path / "device", model_dir=exported_version, channel="canary")
    pageish = requests.Session()
    headers = {"Content-Type": "application/json", "X-Keyboard-Token": s.token}
    assert pageish.post(s.url + "api/commit", data=json.dumps({"text": "numbat at noon.", "field_kind": "message"}),
                        headers=headers, timeout=10).ok
    s.stop()
    caplog.clear()
    r = pageish.get(s.url + "api/status", timeout=10)
    assert (r.status_code, r.json()["error"]) == (503, "stopping")
    assert r.headers.get("Connection", "").lower() == "close"
    assert "damaged" not in caplog.text and "wipe" not in caplog.text
    with pytest.raises(requests.ConnectionError):   # that connection closed, and nothing listens
        pageish.get(s.url + "api/status", timeout=10)
    assert db_rows(s) == ["numbat at noon."]

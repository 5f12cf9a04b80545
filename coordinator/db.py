"""Engine, sessions and migrations. Tables come from Alembic, applied on every start."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from coordinator.errors import DatabaseUnavailable, DatabaseUrlError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


# Under Prometheus's default 10 s scrape timeout, so a scrape with the database's host silent still
# answers, with the counters and fedkeys_database_up 0 (at 10 s the scrape itself timed out).
PG_CONNECT_TIMEOUT_S = 5
STARTUP_LOCK = ".startup.lock"   # in the data directory (data_dir_lock)


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """SQLite gets WAL and a busy timeout so concurrent request threads wait instead of failing.

    `read_only`: an inspection of a data directory that cannot be written (a read-only mount, a
    backup): nothing is created, locked or written, and the database itself refuses writes."""
    example = "e.g. sqlite:////path/to/db.sqlite3 or postgresql+psycopg://user@host/db"
    try:
        backend = make_url(url).get_backend_name()
    except (ArgumentError, ValueError) as e:
        raise DatabaseUrlError(f"database_url is not a database URL ({e}); {example}") from None
    if backend == "sqlite" and make_url(url).database in (None, "", ":memory:"):   # gone when the command exits
        raise DatabaseUrlError(f"database_url names an in-memory SQLite database, which every command would make "
                               f"anew and empty; name a file, {example}")
    if backend == "postgres":                   # Heroku's and libpq's spelling; SQLAlchemy knows only the long one
        raise DatabaseUrlError(f"database_url: write postgresql:// (or postgresql+psycopg://) for {backend}://; "
                               f"{example}")
    if backend not in SUPPORTED_BACKENDS:       # the migrations and locking are written for these two
        raise DatabaseUrlError(f"database_url names a {backend} database; this coordinator runs on SQLite or "
                                  f"PostgreSQL only, {example}")
    try:
        return _make_read_only_engine(url) if read_only else _make_engine(url)
    except (ArgumentError, NoSuchModuleError, ValueError) as e:   # e.g. postgresql+nosuchdriver://
        raise DatabaseUrlError(f"database_url is not a database URL this coordinator can use ({e}); "
                               f"{example}") from None
    except ImportError as e:                    # a driver the URL names is not installed here
        raise DatabaseUnavailable(f"database_url needs a database driver this machine lacks ({e}); "
                                  f"{example}") from None


def create_private(url: str) -> None:
    """A new SQLite database file made readable by its owner only (SQLite gives its -wal and -shm
    the same mode): it holds every device's canary reports and token hashes, and the process umask
    (022) made it world-readable beside the 0600 keys and 0700 blobs."""
    u = make_url(url)
    name = u.database
    if u.get_backend_name() != "sqlite" or not name or name.startswith("file:") or u.query.get("mode"):
        return
    path = Path(name)
    if path.parent.is_dir() and not path.exists():
        with suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None        # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")   # an acknowledged update survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn) -> None:
            # Take the write lock at BEGIN: a count-then-insert (goal, over-selection) stays atomic
            # across processes too, where SQLite ignores SELECT ... FOR UPDATE. Sessions that only
            # read (`reading`) begin deferred: in WAL mode they need no lock at all.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READS_ONLY) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args=_pg_timeout(url))


# What a health check or a scrape waits for the database, under Prometheus's default 10 s scrape
# timeout: with the request engine's 30 s (SQLite's busy timeout, PostgreSQL's pool timeout) a
# locked database would make /metrics and /healthz answer after 30 s, the scrape would fail whole,
# and the documented alert on `fedkeys_database_up 0` could never fire.
MONITOR_WAIT_S = 2


def make_monitor_engine(url: str) -> Engine:
    """Sessions for /healthz and the scrape's gauges, which only read, that wait at most
    MONITOR_WAIT_S: SQLite with a deferred BEGIN (in WAL mode a read needs no lock a writer holds)
    and its busy timeout; PostgreSQL read-only, from a pool of its own, which a burst of uploads
    cannot take, with a statement timeout. (Not SQLite's query_only: `write_lock_free` takes the
    write lock on it, and rolls back.)"""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": MONITOR_WAIT_S, "check_same_thread": False},
                               pool_timeout=MONITOR_WAIT_S)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=4, pool_timeout=MONITOR_WAIT_S,
                           connect_args={k: min(v, MONITOR_WAIT_S) for k, v in _pg_timeout(url).items()},
                           execution_options={"postgresql_readonly": True})

    @event.listens_for(engine, "connect")
    def _statement_timeout(dbapi_conn, _record) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {MONITOR_WAIT_S * 1000}")
        dbapi_conn.commit()

    return engine


def write_lock_free(engine: Engine) -> tuple[str, str] | None:
    """None if a write could start within MONITOR_WAIT_S, else ("busy", why). SQLite only: in WAL
    mode the monitor's reads pass a lock another program holds (an operator's `sqlite3` shell in a
    transaction), while every request that writes waits 30 s and answers 503; a
    PostgreSQL lock shows in the reads' statement timeout."""
    if engine.dialect.name != "sqlite":
        return None
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        try:
            conn.execute("BEGIN IMMEDIATE")   # takes the write lock (and writes nothing): free, or not
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if "database is locked" not in str(e):
                raise
            return "busy", f"another connection holds the write lock ({e})"
    finally:
        raw.close()
    return None


def _pg_timeout(url: str) -> dict[str, int]:
    """A host that accepts the connection and never answers would hang every command and worker
    boot without a word; libpq waits forever unless told. The URL's own ?connect_timeout= wins."""
    parsed = make_url(url)
    libpq = parsed.get_driver_name() in ("psycopg", "psycopg2", "psycopg2cffi")   # the keyword is libpq's
    return {"connect_timeout": PG_CONNECT_TIMEOUT_S} if libpq and "connect_timeout" not in parsed.query else {}


def _make_read_only_engine(url: str) -> Engine:
    """SQLite opened `mode=ro` (it reads a live database and its write-ahead log), or, where that
    cannot open it, a private copy of the file and its log (WAL needs the -shm file beside the
    database, which a folder nobody may write cannot get: a backup, a crashed service's leftovers);
    PostgreSQL sessions that are read-only (the URL's own options kept)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, connect_args=_pg_timeout(url),
                             execution_options={"postgresql_readonly": True})
    path = Path(parsed.database or "").resolve()
    target, copy = _readable_in_place(path), None
    if target is None:
        copy = Path(tempfile.mkdtemp(prefix="fedkeys-read-only-"))
        for suffix in ("", "-wal"):
            if (src := path.with_name(path.name + suffix)).is_file():
                shutil.copyfile(src, copy / (path.name + suffix))
        target = f"file:{quote(str(copy / path.name))}?mode=ro"
    engine = create_engine(url, creator=lambda: sqlite3.connect(target, uri=True, check_same_thread=False))
    if copy is not None:
        weakref.finalize(engine, shutil.rmtree, copy, True)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _readable_in_place(path: Path) -> str | None:
    """The `mode=ro` URI of `path` if SQLite can read it there, else None."""
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return uri


def head_revision() -> str:
    """The schema revision this release reads (its newest migration)."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def held_revision(conn) -> str | None:
    """The schema revision the database behind `conn` holds (None: none yet)."""
    return MigrationContext.configure(conn).get_current_revision()


def require_current_schema(engine: Engine) -> None:
    """What `migrate` checks for a database it cannot upgrade: that it holds this release's schema."""
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            held = held_revision(conn)
    except DatabaseError as e:
        raise _unavailable(engine, e) from None
    if held != (head := head_revision()):
        raise DatabaseUnavailable(
            f"the database {shown} is at schema revision {held!r} and this release reads {head!r}; it cannot be "
            "upgraded where it cannot be written: inspect it with the release that wrote it, or a writable copy")


def _unavailable(engine: Engine, e: DatabaseError) -> DatabaseUnavailable:
    """A database that cannot be opened, in one line: the driver's first line, the URL without its
    password. Out of reach (exit 1), or, for SQLite's "file is not a database", a URL naming a file
    that is not one (a text file, the admin token): the operator's input (DatabaseUrlError, exit 2)."""
    first = str(e.orig if e.orig is not None else e).strip().splitlines()[0]
    shown = engine.url.render_as_string(hide_password=True)
    if engine.dialect.name == "sqlite" and not isinstance(e, OperationalError):
        return DatabaseUrlError(f"{shown} is not a database this coordinator can open ({first}): check --database-url")
    return DatabaseUnavailable(f"cannot open the database {shown}: {first}")


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to `revision` (idempotent).

    On PostgreSQL an advisory lock serializes concurrent starters (several gunicorn workers or
    hosts); SQLite starters on one host are serialized by the caller's data-dir lock.
    """
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    if engine.dialect.name == "sqlite":   # only init and a start make the database: its owner's only
        create_private(engine.url.render_as_string(hide_password=False))
    try:
        conn = engine.connect()
    except DatabaseError as e:
        raise _unavailable(engine, e) from None
    conn.close()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7201358)"))  # released at commit
        cfg.attributes["connection"] = conn
        if revision == "head" and _secagg_numbered_0002(conn):
            command.stamp(cfg, "0001")       # what it really holds: 0001 and the secure-aggregation tables
            command.upgrade(cfg, "0003")     # enrollment-key expiry and the selection window, never run
            command.stamp(cfg, "0004")       # the secure-aggregation tables, the same as 0004 creates
        try:
            command.upgrade(cfg, revision)
        except CommandError as e:   # a revision this release lacks: a newer release upgraded the database
            if "Can't locate revision" not in str(e):
                raise
            held = held_revision(conn)
            shown = engine.url.render_as_string(hide_password=True)
            raise DatabaseUnavailable(
                f"the database {shown} is at schema revision {held!r}, which this release does not know: a newer "
                "FedKeys release upgraded it. Run that release, or restore the database from before the "
                "upgrade") from None


def _secagg_numbered_0002(conn) -> bool:
    """A database from main between c1179a8 and b58b8f1 (2026-11-30), which shipped secure
    aggregation as migration 0002. The merge of issue 12 renumbered that one 0004 and gave 0002
    to enrollment-key expiry, so such a database says 0002 while holding the secure-aggregation
    tables and no `expires_at`: upgraded as it says, it failed with "table secagg_rounds already
    exists" on every command."""
    found = inspect(conn)
    if not (found.has_table("alembic_version") and found.has_table("secagg_rounds")):
        return False
    at = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return at == "0002" and "expires_at" not in {c["name"] for c in found.get_columns("enrollment_keys")}


def downgrade(engine: Engine, revision: str = "base") -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def drop_everything(url: str) -> None:
    """Empty a database of this coordinator's schema, alembic's table too: for benchmarks and tests
    that reuse one PostgreSQL database. Every model module is imported first, so no table is left
    out whose foreign keys would block the drop (the secure-aggregation tables reference rounds)."""
    from coordinator import models, models_secagg  # noqa: F401  (registers their tables)

    engine = make_engine(url)
    try:
        models.Base.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    except OperationalError as e:
        raise _unavailable(engine, e) from None
    finally:
        engine.dispose()


@contextmanager
def probe(url: str, *, read_only: bool = False) -> Iterator[Engine]:
    """An engine for one short look at the database at `url` (an admin command's checks before it
    opens the coordinator), disposed after; a database that cannot be opened says so in one line."""
    engine = make_engine(url, read_only=read_only)
    try:
        yield engine
    except DatabaseError as e:
        raise _unavailable(engine, e) from None
    finally:
        engine.dispose()


def holds_schema(url: str, *, read_only: bool = False) -> bool:
    """Whether the database at `url` has this coordinator's schema (alembic's table), looked up
    without creating anything: a SQLite file that does not exist is not made, so a mistyped
    --database-url is refused instead of answering from a new, empty database."""
    with probe(url, read_only=read_only) as engine:
        if engine.dialect.name == "sqlite":
            path = make_url(url).database
            if not path or path == ":memory:" or not Path(path).is_file():
                return False
        return "alembic_version" in table_names(engine)


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


_READS_ONLY = "fedkeys_reads_only"


def reading(engine: Engine) -> Engine:
    """`engine` (the same pool) for sessions that only read. On SQLite every transaction would take the
    write lock at BEGIN, reads too: a check-in's maintenance reads, every authentication and every
    version download (held while its files are read) would queue behind each other and behind every
    write, 598 s of lock waiting over 14k requests at 2,500 devices. A write in
    such a session would be rolled back with it anyway: they never commit."""
    return engine.execution_options(**{_READS_ONLY: True})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def data_dir_lock(data_dir: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock on <data_dir>/.startup.lock: one starting process at a time creates keys
    and migrates (gunicorn starts its workers simultaneously)."""
    path = Path(data_dir) / STARTUP_LOCK
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def first_line(e: OperationalError) -> str:
    """What a database error says, in one line (the driver's message, without the statement)."""
    return (str(e.orig or e).strip().splitlines() or [type(e).__name__])[0]


def retryable(e: Exception) -> tuple[str, str] | None:
    """For a database error a request may be retried after as it is: ("busy", "unavailable" or "read-only", a
    line saying it) — no pooled connection free, SQLite locked, the database out of reach
    (`unreachable`), or PostgreSQL refusing writes (a demoted primary); None for any other error,
    a fault. The 503 handler and the scrape share it."""
    if isinstance(e, PoolTimeout):
        return "busy", f"no connection free ({(str(e).splitlines() or [type(e).__name__])[0]})"
    if isinstance(e, OperationalError) and unreachable(e):
        return ("busy" if busy(e) else "unavailable"), first_line(e)
    if isinstance(e, DBAPIError) and sqlstate(e) == READ_ONLY_SQLSTATE:
        return "read-only", first_line(e)   # a primary demoted to standby, or default_transaction_read_only
    if isinstance(e, DBAPIError) and sqlstate(e) == QUERY_CANCELED_SQLSTATE:
        return "busy", first_line(e)        # a statement timeout (the monitor's): a lock held past it
    return None


READ_ONLY_SQLSTATE = "25006"   # PostgreSQL's read_only_sql_transaction: an InternalError, not Operational
QUERY_CANCELED_SQLSTATE = "57014"


def sqlstate(e: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of a driver error: psycopg 3 says `sqlstate`, psycopg2 `pgcode`."""
    orig = getattr(e, "orig", e)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def busy(e: OperationalError) -> bool:
    """Whether a database error is SQLite's lock held past the busy timeout: reachable, in use."""
    return isinstance(e.orig, sqlite3.Error) and "database is locked" in str(e.orig)


def unreachable(e: OperationalError) -> bool:
    """Whether a database error means the database cannot be reached now, not that a statement
    failed: a dropped connection, PostgreSQL's connection and shutdown states (class 08, 57P01-03),
    a client-side failure to connect (no SQLSTATE), or SQLite busy or unopenable."""
    if e.connection_invalidated:
        return True
    orig = e.orig
    if isinstance(orig, sqlite3.Error):
        return any(s in str(orig) for s in ("database is locked", "unable to open database file"))
    state = sqlstate(e)
    return not state or state.startswith("08") or state in ("57P01", "57P02", "57P03")

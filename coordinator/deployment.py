"""What the serving coordinator runs with, recorded in its database for admin commands.

Admin commands (`status`, `tick`, `start-round`, `canary`, ...) close due rounds, open scheduled
ones and judge candidates. Run from a shell without the service's --profile, --config or
environment, they did it with the defaults: FedAvg where the service runs FedAdam, another goal,
another canary tolerance. The service records its settings when it starts (every gunicorn
worker the same), and an admin command takes them as its defaults, under its own profile, file,
environment and flags.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, make_url, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from coordinator.config import Config, ConfigError, deployment_settings
from coordinator.db import holds_schema, probe, session_factory
from coordinator.models import Setting, Version
from coordinator.states import VersionStatus
from protocol.settings import coerce_settings

log = logging.getLogger(__name__)
KEY = "service_settings"
SOURCE = "the settings the serving coordinator recorded"
SIGNING_KEY = "signing_public_key"   # the data directory this database belongs to


def upsert(engine: Engine) -> Any:
    """An INSERT that takes ON CONFLICT (a row several workers may write at once)."""
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def require_database(cfg: Config, *, read_only: bool = False) -> None:
    """Refuse a database this coordinator's `init` never made (missing, or empty): only `init`
    creates one. The CLI checked this and the gunicorn entry point did not, so a
    FEDKEYS_COORDINATOR_DATABASE_URL line lost from coordinator.env (an unquoted `&`) had the
    service create and serve a new, empty SQLite database in the data directory, record the
    data directory's key in it and tell every enrolled device to enroll again."""
    if not holds_schema(cfg.resolved_database_url, read_only=read_only):
        shown = make_url(cfg.resolved_database_url).render_as_string(hide_password=True)
        raise ConfigError(f"no coordinator database at {shown}: check --database-url (init of {cfg.data_dir} "
                          "made its database elsewhere), or create this one with: python -m coordinator init "
                          "--data-dir DIR --database-url URL")


def missing_files(coord: Any, *, check_digests: bool = False) -> list[str]:
    """The versions devices are sent (stable, candidate) whose files the data directory lacks, or,
    with `check_digests`, holds damaged. A data directory older than its database (restored from
    an earlier backup) holds the signing key, so it passes `check_pairing`, and would answer every
    download of a newer version with a 500; a truncated file would be served, and every device
    refuse it on its own, with nothing in the service's log."""
    with coord._sessions() as s:
        rows = s.execute(select(Version.id, Version.weights_sha256, Version.graph_sha256, Version.tokenizer_sha256,
                                Version.manifest_json)
                         .where(Version.status.in_([VersionStatus.STABLE, VersionStatus.CANDIDATE]))).all()
    return [vid for vid, *digests, manifest in rows if not _held(coord, *digests, manifest, check_digests)]


def holds_files(coord: Any, v: Version) -> bool:
    """Whether the data directory holds every file devices download of `v`."""
    return _held(coord, v.weights_sha256, v.graph_sha256, v.tokenizer_sha256, v.manifest_json)


def _held(coord: Any, weights: str, graph: str, tokenizer: str, manifest_json: str,
          check_digests: bool = False) -> bool:
    q8 = json.loads(manifest_json).get("weights_q8_sha256")
    held = coord.blobs.intact if check_digests else coord.blobs.exists
    return all(held(d) for d in (weights, graph, tokenizer, q8) if d)


def check_pairing(engine: Engine, public_key_hex: str, data_dir: str | Path, *, read_only: bool = False) -> None:
    """Refuse a data directory and a database that were not created together. The database's
    versions were signed with one data directory's key and their weights are in its blobs: served
    with another's, every manifest fails devices' signature checks and every download is a 500.
    The first coordinator to open a database records its key (databases from before this check
    take the first data directory that opens them)."""
    with session_factory(engine)() as s, s.begin():
        if not read_only:
            s.execute(upsert(engine)(Setting).values(key=SIGNING_KEY, value=public_key_hex)
                      .on_conflict_do_nothing(index_elements=[Setting.key]))
        recorded = s.scalar(select(Setting.value).where(Setting.key == SIGNING_KEY))
    if recorded != public_key_hex and not (read_only and recorded is None):
        raise ConfigError(f"the data directory {data_dir} does not belong to this database: its signing key "
                          f"({public_key_hex[:12]}...) is not the one the database's versions were signed with "
                          f"({str(recorded)[:12]}...); give the --data-dir created with this database, or the "
                          f"--database-url created with this data directory")


def check_unpaired(engine: Engine, data_dir: str | Path) -> None:
    """`init` of a new data directory for a database another one already signs for: refused
    before the new directory gets a key and a token (`check_pairing` refuses it only after, and
    would leave them there), and before that database is migrated under the release
    that serves it."""
    if not inspect(engine).has_table(Setting.__tablename__):   # a new database: nobody's yet
        return
    with session_factory(engine)() as s:
        recorded = s.scalar(select(Setting.value).where(Setting.key == SIGNING_KEY))
    if recorded is not None:
        raise ConfigError(f"this database belongs to another data directory (its versions were signed with key "
                          f"{recorded[:12]}...), and {data_dir} holds no signing key: give the --data-dir created "
                          f"with this database, or a new database for a new coordinator; no key, token or "
                          f"schema change was written")


def record(coord: Any) -> None:
    """Store the serving coordinator's deployment settings (coordinator.config.deployment_settings).

    An upsert, one statement: gunicorn's workers all start at once, and a read-then-insert would
    let two of them insert the row, failing one worker's boot (and with it the master)."""
    own = deployment_settings(coord.config)
    value = json.dumps(own, sort_keys=True)
    with coord.tx() as s:
        before = s.scalar(select(Setting.value).where(Setting.key == KEY))
        s.execute(upsert(coord.engine)(Setting).values(key=KEY, value=value)
                  .on_conflict_do_update(index_elements=[Setting.key], set_={"value": value}))
    _note_replaced(json.loads(before) if before else {}, own)


def _note_replaced(before: dict[str, Any], own: dict[str, Any]) -> None:
    """Say which recorded settings a start replaced. A restart with new settings means it; a second
    service started on the same database with other ones (another --profile) silently became what
    admin commands judge with, while the first kept running on its own."""
    changed = sorted(k for k in own if k in before and before[k] != own[k])
    if changed:
        log.warning("this service's settings replace those recorded by the coordinator that served this database "
                    "before (%s): admin commands take these now; if that one still serves, the two run rounds and "
                    "judge candidates differently", ", ".join(f"{k}={own[k]!r} (was {before[k]!r})" for k in changed))


def recorded(database_url: str, *, read_only: bool = False) -> dict[str, Any]:
    """The settings the last serving coordinator recorded ({} when none has served this database),
    each coerced to this release's type. One that is not a setting here, or not of its type
    (recorded by another release), is left out with a warning: the command's defaults stand."""
    with probe(database_url, read_only=read_only) as engine, session_factory(engine)() as s:
        value = s.scalar(select(Setting.value).where(Setting.key == KEY))
    if value is None:
        return {}
    known = {f.name for f in fields(Config)}
    out: dict[str, Any] = {}
    for k, v in json.loads(value).items():
        try:
            out |= coerce_settings(Config, {k: v}, SOURCE, ConfigError) if k in known else {}
        except ConfigError as e:
            log.warning("%s; this command uses its own", e)
    return out


def note_differences(cfg: Config, served: dict[str, Any]) -> None:
    """Log the deployment settings this command sets itself to other values than the service's."""
    own = deployment_settings(cfg)
    differ = sorted(k for k, v in served.items() if k in own and own[k] != v)
    if differ:
        log.warning("this command's own settings differ from the serving coordinator's: %s",
                    ", ".join(f"{k}={own[k]!r} (service: {served[k]!r})" for k in differ))

"""`python -m coordinator`: serve the API, or run an admin command against a data directory."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from protocol.cli import interrupt_exits

with interrupt_exits():   # Ctrl-C while these load: "interrupted", exit 130
    from coordinator import keys, listing, logs
    from coordinator.config import PROFILES, Config, ConfigError, load_config, process_config
    from coordinator.errors import ApiError, DatabaseUnavailable, DatabaseUrlError
    from coordinator.listing import REJECTIONS_SHOWN, ROUNDS_SHOWN
    from coordinator.states import VERSION_ACTIONS, VersionAction
    from protocol.artifact import ArtifactError
    from protocol.cli import (
        EXIT_USER_ERROR,
        HelpFormatter,
        Parser,
        add_version,
        bind_error,
        exit_if_stdout_closed,
        file_in_the_way,
        url_host,
    )
    from protocol.plan import PLAN_FIELD_NAMES, PLAN_FIELDS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help=f"coordinator data directory (blobs, keys, SQLite DB); only `init` creates "
                                      f"one (default: {Config.data_dir})")
    p.add_argument("--config", help="TOML or JSON config file (also FEDKEYS_COORDINATOR_CONFIG)")
    p.add_argument("--database-url", help="SQLAlchemy URL; default SQLite in the data dir")
    p.add_argument("--profile", choices=sorted(PROFILES),
                   help="preset settings under file/env/flags; small: one device, rounds every few seconds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting (docs/settings.md lists them)")


_VERSION_ARGUMENT = {   # which version each version command takes (`versions` lists them)
    VersionAction.PROMOTE: "the candidate",
    VersionAction.REJECT: "the candidate",
    VersionAction.PIN: "any version whose files are kept",
    VersionAction.UNPIN: "the stable version (the one pinned)",
    VersionAction.ROLLBACK: "a retired version whose files are kept",
}


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m coordinator", description=(
        "FedKeys coordinator. Settings: defaults < (admin commands) the service's recorded settings < --profile < "
        "--config file < FEDKEYS_COORDINATOR_* env < flags."))
    add_version(ap)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        _common(p)
        return p

    p = cmd("serve", "serve the HTTP API (threaded; use gunicorn 'coordinator.app:create_app()' in production)")
    p.add_argument("--host", help=f"address to listen on; 0.0.0.0 for a LAN (put TLS in front: deploy/) "
                                  f"(default: {Config.host})")
    p.add_argument("--port", type=int, help=f"(default: {Config.port})")
    cmd("init", "create the data dir, database schema, signing key and admin token; print them")
    p = cmd("create-enrollment-key", "create an enrollment key and print it")
    p.add_argument("--label", default="")
    p.add_argument("--uses", type=int, default=None,
                   help="how many devices may enroll with it (default: setting enrollment_key_uses, as the "
                        "service recorded it; built in: 100)")
    p.add_argument("--expires-in-s", type=float, default=None,
                   help="lifetime in seconds (default: setting enrollment_key_ttl_s, as the service recorded "
                        "it; built in: 7 days)")
    _listing(cmd("enrollment-keys", "list enrollment keys (never their secrets) and the devices each minted"))
    p = cmd("revoke-enrollment-key", "stop an enrollment key enrolling devices (a leaked one)")
    p.add_argument("key", help="the key's id (from enrollment-keys) or the key itself")
    p.add_argument("--devices", action="store_true", help="also revoke every device it minted")
    p = cmd("revoke-device", "revoke one device: its token is refused from then on")
    p.add_argument("device_id")
    p = cmd("import-version", "import a model version directory (first one becomes stable)")
    p.add_argument("directory")
    p.add_argument("--stable", action="store_true", help="make it stable at once instead of a canary candidate "
                   "(a version held here, its files restored: as rollback or pin would)")
    p.add_argument("--force", action="store_true",
                   help="import it although it does not build on the stable version (the rounds since are dropped)")
    p = cmd("export-version", "write a version's files to a new folder (e.g. the stable one, to add words to)")
    p.add_argument("version_id")
    p.add_argument("directory")
    p = cmd("start-round", "open a training round on the stable version")
    for k, t in (("goal-count", int), ("min-count", int), ("overselect", float), ("round-duration-s", float),
                 ("selection-window-s", float)):
        p.add_argument(f"--{k}", type=t, help=f"(default: setting {k.replace('-', '_')}, as the service "
                                              f"recorded it; built in: {getattr(Config, k.replace('-', '_'))})")
    for f in PLAN_FIELDS:   # protocol.plan: the one declaration of a plan's fields and bounds
        kw: dict[str, Any] = ({"action": argparse.BooleanOptionalAction, "default": None} if f.kind is bool
                              else {"type": f.kind})
        p.add_argument(f"--{f.name.replace('_', '-')}", **kw,
                       help=f"{f.help}; in {f.describe()} (default: setting {f.name}, as the service recorded it; "
                            f"built in: {getattr(Config, f.name)})")
    p = cmd("close-round", "close a round now (aggregate if it has enough updates); exit 3 if it stays open")
    p.add_argument("round_id", type=round_id)
    p.add_argument("--force", action="store_true", help="close before the deadline with the minimum count")
    cmd("tick", "close rounds that reached their goal or deadline")
    cmd("status", "print stable/candidate versions and the latest round")
    _listing(cmd("versions", "list versions with status, epsilon and decisions"))
    p = _listing(cmd("rounds", "list the newest rounds with their counts"))
    p.add_argument("--limit", type=count, default=ROUNDS_SHOWN, help="the newest N")
    p.add_argument("--before", type=row_id, help="only rounds older than this id (the page before)")
    cmd("canary", "show the canary comparison of candidate vs stable")
    p = cmd("rejections", "list rejected updates with their reasons")
    p.add_argument("--round-id", type=round_id)
    p.add_argument("--limit", type=count, default=REJECTIONS_SHOWN, help="the newest N")
    p.add_argument("--before", type=row_id, help="only rejections older than this id (the page before)")
    for action in VersionAction:
        p = cmd(action.value, action.help)   # the plain name: an enum member would print as its repr in usage errors
        p.add_argument("version_id", help=_VERSION_ARGUMENT[action])
    cmd("public-key", "print the Ed25519 public key (hex) devices must be configured with")
    cmd("admin-token", "print the admin token")
    return ap


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {"data_dir": args.data_dir, "database_url": args.database_url, "profile": args.profile}
    for name in ("host", "port"):
        flags[name] = getattr(args, name, None)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        flags[key.strip()] = value
    return flags


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _listing(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--format", choices=("auto", "table", "json"), default="auto",
                   help="table: the columns an operator reads; json: every field; auto: table on a terminal, "
                        "json when piped")
    return p


def _as_table(fmt: str) -> bool:
    return fmt == "table" or (fmt == "auto" and sys.stdout is not None and sys.stdout.isatty())


def _print_list(command: str, rows: list[dict[str, Any]], fmt: str) -> None:
    if _as_table(fmt):
        print(listing.table(rows, listing.COLUMNS[command]))
    else:
        _print(rows)


def count(text: str) -> int:
    """A positive count (argparse says which is wrong)."""
    value = int(text)
    if not 1 <= value < 2**63:
        raise ValueError(text)
    return value


def round_id(text: str) -> int:
    """A round id as the wire and the API bound one (`protocol.fields.MAX_INT`); argparse says which is wrong."""
    from protocol.fields import MAX_INT

    value = int(text)
    if not 1 <= value <= MAX_INT:
        raise ValueError(text)
    return value


def row_id(text: str) -> int:
    """A listing's `--before`: the id of a round or a rejection, as `round_id` checks one."""
    return round_id(text)


# Commands that only read: they run on a data directory that cannot be written (a read-only
# mount, a backup), opening it read-only. Every other command changes it, and is refused there.
INSPECTIONS = frozenset({"status", "versions", "rounds", "canary", "rejections", "enrollment-keys", "public-key",
                         "admin-token"})


def _read_only(cfg: Any, command: str) -> bool:
    """Whether `command` runs read-only: an inspection where what commands write cannot be written
    (the start lock, the blob and upload folders, a SQLite file and its folder). Otherwise it would
    fail on the first file it opens to write, with a line that does not say why, or a traceback."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from coordinator.db import STARTUP_LOCK

    data = Path(cfg.data_dir)
    written = [p if p.exists() else data for p in (data / STARTUP_LOCK, data / "blobs", data / "uploads")]
    try:
        url = make_url(cfg.resolved_database_url)
    except (ArgumentError, ValueError):   # said by the database's own checks, in their words
        url = None
    if url is not None and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database).resolve()
        written += [db, db.parent]
    blocked = [p for p in written if p.exists() and not os.access(p, os.W_OK)]
    if not blocked and _disk_full(data):
        # SQLite cannot open a database in WAL mode without room for its -shm and log, so `status`
        # would answer only "disk I/O error" while the service fails for the same reason.
        if command not in INSPECTIONS:
            raise ConfigError(f"the disk of {data} is full, and `{command}` changes the coordinator's state: free "
                              f"space first; meanwhile {', '.join(sorted(INSPECTIONS))} run")
        print(f"note: the disk of {data} is full: reading it read-only", file=sys.stderr)
        return True
    if not blocked:
        return False
    if command not in INSPECTIONS:
        raise ConfigError(f"{blocked[0]} cannot be written, and `{command}` changes the coordinator's state; there "
                          f"only {', '.join(sorted(INSPECTIONS))} run")
    return True


def _disk_full(data: Path) -> bool:
    """Whether the data directory's disk has no room left (under 1 MiB for this user). A file
    system of no size (/proc, /sys) is no disk: not "full", whatever fails there next says why."""
    try:
        usage = shutil.disk_usage(data if data.exists() else data.parent)
    except OSError:
        return False
    return usage.total > 0 and usage.free < 2**20


EXIT_LEFT_OPEN = 3   # close-round left the round open: not an error (1) nor the operator's input (2)


def _admin(c: Any, args: argparse.Namespace) -> int:
    """Run one admin command against the coordinator state; its exit code."""
    a = args.command
    if a == "init":
        cfg = c.config
        c.ensure_admin_token()
        token = ({"admin_token": "the admin_token setting (no file is written)"} if cfg.admin_token
                 else {"admin_token_file": f"{cfg.data_dir}/admin_token"})
        from sqlalchemy import make_url  # the whole URL but its password ("/fedkeys?host=..." hid the scheme)

        _print({"data_dir": cfg.data_dir,
                "database": make_url(cfg.resolved_database_url).render_as_string(hide_password=True),
                "public_key_hex": c.public_key_hex, **token})
    elif a == "create-enrollment-key":
        print(c.create_enrollment_key(label=args.label, uses=args.uses, expires_in_s=args.expires_in_s))
    elif a == "enrollment-keys":
        _print_list(a, c.list_enrollment_keys(), args.format)
    elif a == "revoke-enrollment-key":
        by_id = re.fullmatch(r"[0-9]+", args.key) is not None   # a key itself starts with "fk" (keys.new_secret)
        _print(c.revoke_enrollment_key(key_id=int(args.key) if by_id else None, key=None if by_id else args.key,
                                       devices=args.devices))
    elif a == "revoke-device":
        _print(c.revoke_device(args.device_id))
    elif a == "import-version":
        before = c.status()["candidate_version_id"]
        vid = c.import_version(args.directory, as_candidate=False if args.stable else None, any_parent=args.force)
        print(vid)
        now = c.status()
        if before and before != vid and now["candidate_version_id"] != before:   # never set aside silently
            print(f"note: candidate {before}, still in its canary, was set aside for {vid}; what its round's "
                  "devices sent has spent their privacy", file=sys.stderr)
        if now["candidate_version_id"] == vid and (r := now["latest_round"]) and r["status"] == "open":
            print(f"note: round {r['round_id']} is open; the version it makes replaces candidate {vid} unless the "
                  "canary decides first or favours it under a pin", file=sys.stderr)
    elif a == "export-version":
        print(c.export_version(args.version_id, args.directory))
    elif a == "start-round":
        settings = ("goal_count", "min_count", "overselect", "round_duration_s", "selection_window_s",
                    *PLAN_FIELD_NAMES)
        rid = c.start_round(**{k: getattr(args, k) for k in settings})
        _print(c.get_round(rid))
        now = c.status()
        if (cand := now["candidate_version_id"]) and now["pinned"] and c.canary_comparison()["would"] == "promote":
            print(f"note: candidate {cand} waits for unpin with the canary in its favour: the version this round "
                  "makes will be set aside, and what its devices send spends their privacy for nothing",
                  file=sys.stderr)
        elif cand:
            print(f"note: candidate {cand} is still in its canary; the version this round makes replaces it "
                  "unless the canary decides first or favours it under a pin", file=sys.stderr)
    elif a == "close-round":
        was = c.get_round(args.round_id)["status"]
        r = c.close_round(args.round_id, force=args.force)
        _print(r)
        if was != "open":
            print(f"note: round {args.round_id} was already {was}: nothing to close", file=sys.stderr)
        elif r["status"] == "open":   # before its deadline without its goal: say why, what closes it, exit 3
            print(f"round {args.round_id} left open: before its deadline without its goal; --force closes it "
                  "now (aggregating if it has the minimum, else failing it)", file=sys.stderr)
            return EXIT_LEFT_OPEN
    elif a == "tick":
        c.maintenance(wait=True)
        _print(c.status())
    elif a == "status":
        _print(c.status())
    elif a in ("versions", "rounds"):
        if a == "rounds":
            got = c.list_rounds(args.limit, args.before)
            rows = got["rounds"]
            if got["next_before"] is not None:
                print(f"{len(rows):,} of {got['total']:,} rounds; older ones: --before {got['next_before']}",
                      file=sys.stderr)
        else:   # the table's columns need no privacy history: summaries, which do not parse them all
            rows = c.version_summaries() if _as_table(args.format) else c.list_versions()
        _print_list(a, rows, args.format)
    elif a == "canary":
        _print(c.canary_comparison())
        cfg = c.config
        judged = f"canary_min_reports {cfg.canary_min_reports}, canary_tolerance {cfg.canary_tolerance:g}"
        if args.served:   # the service recorded its settings when it started (coordinator.deployment)
            print(f"judged with the serving coordinator's settings under this command's own ({judged})",
                  file=sys.stderr)
        else:
            print(f"judged with this command's settings ({judged}): no serving coordinator has recorded its "
                  "settings in this database; give it the server's --profile, --config or --set to see its decision",
                  file=sys.stderr)
    elif a == "rejections":
        got = c.rejections(args.round_id, args.limit, args.before)
        _print(got["rejections"])
        if got["next_before"] is not None:
            print(f"{len(got['rejections']):,} of {got['total']:,} rejections; older ones: --before "
                  f"{got['next_before']}", file=sys.stderr)
    elif a in VERSION_ACTIONS:
        before = c.status() if a in ("pin", "unpin") else {}
        _print(c.admin_decide(args.version_id, a))
        if a == "unpin" and not before["pinned"]:
            print("note: nothing was pinned: nothing changed", file=sys.stderr)
        elif a == "pin" and before["pinned"] and before["stable_version_id"] == args.version_id:
            print(f"note: {args.version_id} was pinned already: nothing changed", file=sys.stderr)
    elif a == "public-key":
        print(c.public_key_hex)
    elif a == "admin-token":
        print(_admin_token(c))
    return 0


def _admin_token(c: Any) -> str:
    """The token to log in with, checked against the one the service last started with: an admin
    command run without the service's FEDKEYS_COORDINATOR_ADMIN_TOKEN printed a token of a file it
    made, which the service refused."""
    served = keys.served_token(c.data_dir)
    if c.admin_token is None:
        if served is not None and served["from"] == "setting":
            raise ConfigError("the service takes its admin token from its admin_token setting "
                              "(FEDKEYS_COORDINATOR_ADMIN_TOKEN or its config file), which this command was not given: "
                              "run it with the service's environment (deploy/README.md)")
        if c.read_only:   # none is made
            raise ConfigError(f"{c.data_dir} holds no {keys.ADMIN_TOKEN_FILE}, and cannot be written to make one")
    token = c.ensure_admin_token()
    if served is not None and not keys.secret_matches(token, served["sha256"]):
        was = ("its admin_token setting" if served["from"] == "setting"
               else f"another token in {keys.ADMIN_TOKEN_FILE}")
        print(f"note: the service last started (or reloaded) with {was}, and refuses this one until it restarts "
              "with it (a reload, for a new file)", file=sys.stderr)
    return token


def main(argv: list[str] | None = None) -> int:
    # One process (admin commands, `serve`): its own registry. Multiprocess metrics are gunicorn's,
    # and an admin command run with the service's environment must not write counters there.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    try:
        admin = args.command not in ("init", "serve")   # takes the service's recorded settings (below)
        load = process_config if admin else load_config
        cfg = load(config_file=args.config, flags=_flags(args))
        logs.setup(cfg.log_level, log_format=cfg.log_format)
        if args.command != "init" and not keys.is_initialised(cfg.data_dir):
            raise ConfigError(f"{cfg.data_dir} is not a coordinator data directory (no {keys.SIGNING_KEY_FILE}); "
                              f"check --data-dir, or create one with: python -m coordinator init --data-dir DIR")
        from coordinator import deployment  # here: a device-only install has no SQLAlchemy (said below)

        read_only = _read_only(cfg, args.command)
        if args.command != "init":
            deployment.require_database(cfg, read_only=read_only)
        if admin:   # the service's settings, under this command's own
            served = deployment.recorded(cfg.resolved_database_url, read_only=read_only)
            cfg = load_config(config_file=args.config, flags=_flags(args), served=served)
            deployment.note_differences(cfg, served)
            args.served = bool(served)
        if args.command == "serve":
            from werkzeug.serving import make_server

            from coordinator.app import create_app
            _check_port(cfg.host, cfg.port)      # before the app opens its database
            app = create_app(cfg)
            server = make_server(cfg.host, cfg.port, app, threaded=True)
            print(f"serving on http://{url_host(cfg.host)}:{server.server_port}", flush=True)
            if cfg.host not in ("127.0.0.1", "::1", "localhost"):   # the README says so; the command too
                print(f"warning: {cfg.host} is reachable from other machines and this server speaks plain HTTP: "
                      "tokens and updates travel in clear unless a TLS proxy is in front (deploy/README.md)",
                      file=sys.stderr, flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            return 0
        from coordinator.service import Coordinator
        c = Coordinator(cfg, read_only=read_only)
        try:
            return _admin(c, args)
        finally:
            c.close()
    except ApiError as e:          # a refused admin request (conflict, unknown version, bad value)
        print(f"error: {e.message}", file=sys.stderr)
        return EXIT_USER_ERROR if e.status < 500 else 1  # 4xx: the operator's input was wrong
    except (ConfigError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except DatabaseUnavailable as e:     # a URL that is not one (2), or a server or file out of reach (1)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR if isinstance(e, DatabaseUrlError) else 1
    except BrokenPipeError:              # `| head` closed stdout: exit quietly, as Unix tools do
        exit_if_stdout_closed()
        raise
    except OSError as e:
        blocker = file_in_the_way(e)     # --data-dir naming a file: the operator's input
        print(f"error: {blocker or e}", file=sys.stderr)
        return EXIT_USER_ERROR if blocker else 1
    except ModuleNotFoundError as e:     # installed as `pip install .` (the device runtime) only
        print(f"error: the coordinator needs {e.name}: pip install 'fedkeys[coordinator]'", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:            # Ctrl-C in an admin command: its transaction is rolled back
        print("interrupted", file=sys.stderr)
        return 130


def _check_port(host: str, port: int) -> None:
    """Refuse a port another program holds in one line (werkzeug prints two and exits), before the
    app is served. The same reuse rule as the server's own socket, so a port in TIME_WAIT is free."""
    if port == 0 or (e := bind_error(host, port)) is None:
        return
    said = f"cannot listen on {url_host(host)}:{port}: {e.strerror or e}"
    if e.errno == errno.EADDRINUSE:   # the machine's state: exit 1
        raise OSError(f"{said} (another program holds it? choose another with --port)")
    # the operator's --host: a user error, exit 2 as the README says
    raise ConfigError(f"{said} (--host must be an address of this machine (127.0.0.1, ::1, 0.0.0.0) "
                      "or a name of one)")



def cli() -> None:
    """The `fedkeys-coordinator` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

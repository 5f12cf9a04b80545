"""`python -m edge_runtime`: enroll the device, run its loop, and manage its local text cache.

Settings: defaults < --config JSON file (or FEDKEYS_EDGE_CONFIG) < FEDKEYS_EDGE_* < flags.
Every failure is one line on stderr and a non-zero exit; typed text is never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from protocol.cli import interrupt_exits

with interrupt_exits():   # Ctrl-C while these load: "interrupted", exit 130
    from edge_runtime import cache as text_cache
    from edge_runtime import paths
    from edge_runtime.cache import MAX_TEXT, CacheError, DamagedCacheError, disk_full, wipe_in_place
    from edge_runtime.config import ELIGIBILITY_MODES, ConfigError, EdgeConfig, load_config, plain_http_warning
    from edge_runtime.errors import no_core_dumps
    from edge_runtime.forget import forget_learned
    from edge_runtime.identity import IdentityError, coordinator_key, readable_identity
    from edge_runtime.versions import VersionError, VersionStore
    from protocol.artifact import read_manifest
    from protocol.cli import (
        EXIT_USER_ERROR,
        HelpFormatter,
        Parser,
        add_version,
        exit_if_stdout_closed,
        file_in_the_way,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="the device's data directory (identity, text cache, models)")
    p.add_argument("--config", help="JSON settings file (also FEDKEYS_EDGE_CONFIG)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set min_idle_s=60 (repeatable)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(default: INFO)")


def _keyboard_flags(p: argparse.ArgumentParser, port_help: str, *names: str) -> None:
    p.add_argument(*names, "--keyboard-port", dest="keyboard_port", type=int, metavar="PORT", help=port_help)
    p.add_argument("--keyboard-host", metavar="HOST",
                   help="address for the keyboard page (default 127.0.0.1); typed text crosses this socket, "
                        "so a non-loopback address is only accepted from this flag")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m edge_runtime", description=(
        "FedKeys device runtime. Settings: defaults < --config file < FEDKEYS_EDGE_* environment < flags."))
    add_version(ap)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        _common(p)
        return p

    p = cmd("enroll", "enroll this device with a coordinator (stores its identity in the data dir)")
    p.add_argument("--coordinator", help="coordinator base URL, e.g. http://10.0.0.2:8400")
    p.add_argument("--enrollment-key", required=True, help="the shared enrollment key from the operator")
    p.add_argument("--public-key", help="the coordinator's Ed25519 public key (64 hex); default: trust on first use")
    p.add_argument("--force", action="store_true", help="replace an existing enrollment")

    p = cmd("run", "run the device loop: check in, swap models, train or evaluate when told and eligible")
    p.add_argument("--coordinator", help="override the URL stored at enrollment")
    p.add_argument("--once", action="store_true",
                   help="one check-in and its task, then exit (0 = ok; 1 = the check-in, its task or the model "
                        "version it named failed, the current version kept)")
    p.add_argument("--eligibility", choices=ELIGIBILITY_MODES,
                   help="auto: power, idle, load and network checks (default); override:* for emulators")
    _keyboard_flags(p, "also serve the demo keyboard page on this port (default: no page)")

    p = cmd("keyboard", "serve the demo keyboard page without a coordinator (suggestions, cache, pause, wipe)")
    p.add_argument("--model", help="a model version directory to use (default: the device's current version)")
    p.add_argument("--channel", choices=("stable", "canary"),
                   help="label the model as stable or canary (default: what the device loop last recorded)")
    _keyboard_flags(p, "port to serve on (default: any free port)", "--port")   # --keyboard-port too, as `run`

    p = cmd("type", "commit text into the local cache as the keyboard would (never printed)")
    p.add_argument("--field-kind", required=True,
                   help="kind of input field, e.g. message, note; sensitive kinds (password, email, url, "
                        "number, private ...) are never cached")
    p.add_argument("--private", action="store_true", help="the field is marked private (never cached)")
    p.add_argument("text", nargs="?", default="-",
                   help="the committed text; omit it (or -) to read it from standard input, which keeps it out of "
                        "the process list and the shell's history")

    cmd("pause", "pause learning: no text is cached, and nothing is trained, evaluated or personalized on the "
               "cache, until resume (persists across restarts)")
    cmd("resume", "resume learning")
    cmd("wipe", "delete all cached text and the personal model learned from it from this device")
    cmd("status", "print enrollment, model versions, cache counts and eligibility as JSON")
    p = cmd("notices", "print the licence notices that came with the model version in use (e.g. its word list's)")
    p.add_argument("--model", help="a model version directory (default: the device's current version)")
    return ap


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {"data_dir": args.data_dir, "log_level": args.log_level}
    for name in ("coordinator", "public_key", "eligibility", "keyboard_host", "keyboard_port"):
        flags[name] = getattr(args, name, None)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        flags[key.strip()] = value
    return flags


def _notices(version_dir: Path) -> str:
    """The licence notices of a version's files, as its signed manifest carries them."""
    manifest = read_manifest(version_dir)   # ArtifactError (a ValueError) names what is wrong
    if not manifest.notices:
        return f"version {manifest.version_id}: its files came with no licence notices"
    return "\n\n".join(f"== {name} (version {manifest.version_id}) ==\n{text}"
                        for name, text in sorted(manifest.notices.items()))


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:   # argparse's own line quotes them: after `type`, the words of a text not quoted as one argument
        ap.error("unrecognized arguments: " + (f"{len(extra)}, not named here (give the text as one quoted argument "
                                               "that does not start with '-', or on standard input)"
                                               if args.command == "type" else " ".join(extra)))
    if not args.command:
        ap.print_help()
        return 2
    try:
        no_core_dumps()   # a crash must not write the text this process holds to a core file
        cfg = load_config(config_file=args.config, flags=_flags(args))
        _setup_logging(cfg.log_level)
        c = args.command
        if c == "notices" and args.model:   # a version directory alone needs no device
            print(_notices(Path(args.model)))
            return 0
        data_dir = cfg.require_data_dir()
        if c not in ("enroll", "keyboard") and not _holds_device(data_dir):   # a typo must not start a new
            # device, `wipe` must not delete a `personal/` folder of a directory that is not one, and
            # `notices` names the typo rather than "no usable model version"
            raise ConfigError(f"{data_dir} is not a device data directory (no {paths.IDENTITY_FILE} or "
                              f"{paths.CACHE_DB} in it); create one with "
                              f"python -m edge_runtime enroll --data-dir {data_dir} ... (or keyboard)")
        # The device loop (`agent`: the coordinator client, the trainer, secure aggregation) is
        # imported by the commands that use it only: `keyboard` runs without it (`_loaded`).
        if c == "enroll":
            from edge_runtime import agent

            _warn_plain_http(cfg.coordinator)
            ident = agent.enroll(cfg, args.enrollment_key, force=args.force)
            print(json.dumps({"device_id": ident.device_id, "coordinator": ident.coordinator,
                              "public_key_hex": ident.public_key}))
        elif c == "run":
            from edge_runtime import agent

            with agent.run_lock(cfg.require_data_dir()):
                dev = agent.Device.open(cfg)
                _warn_plain_http(cfg.coordinator or dev.identity.coordinator)
                stop = _stop_on_signals()
                page = None
                try:
                    if cfg.keyboard_port:
                        from edge_runtime import keyboard

                        page = keyboard.start_keyboard(cfg.data_dir, host=cfg.keyboard_host,
                                                       port=cfg.keyboard_port, config=cfg, cache=dev.cache,
                                                       allow_remote=args.keyboard_host is not None)
                        print(f"keyboard page: {page.page_url}", flush=True)
                    return agent.run_loop(dev, once=args.once, stop=stop)
                finally:
                    if page is not None:
                        page.stop()
                    dev.close()
        elif c == "keyboard":
            from edge_runtime import keyboard

            stop = _stop_on_signals()
            keyboard.serve_keyboard(cfg.data_dir, model_dir=args.model, host=cfg.keyboard_host,
                                    port=cfg.keyboard_port, config=cfg, channel=args.channel,
                                    allow_remote=args.keyboard_host is not None, stop=stop,
                                    on_ready=lambda url: print(f"keyboard page: {url}", flush=True))
        elif c == "type":
            if args.text == "-":   # argv is readable by every local user (/proc/PID/cmdline): stdin is not
                args.text = sys.stdin.read().rstrip("\n")
            # One commit, as the keyboard page's: a running keyboard learns it at once, under its lock.
            if len(args.text) > MAX_TEXT:
                raise ValueError(f"the text is {len(args.text):,} characters; a commit holds at most "
                                 f"{MAX_TEXT:,}, as the keyboard's: type it in parts")
            if text_cache.type_text(cfg, args.text, args.field_kind, private=args.private):
                print("cached")
            else:
                with text_cache.open_cache(cfg) as cache:
                    why = cache.why_not(args.text, args.field_kind, private=args.private)
                if not args.private and text_cache.is_sensitive(args.field_kind):   # a typo reads as one too
                    why += f"; text is learned only from {', '.join(sorted(text_cache.LEARNABLE_FIELD_KINDS))}"
                print(f"not cached: {why}")
        elif c in ("pause", "resume"):
            with text_cache.open_cache(cfg) as cache:
                cache.set_paused(c == "pause")
            print("learning paused" if c == "pause" else "learning resumed")
        elif c == "wipe":
            forget_learned(cfg.require_data_dir())
            try:
                with text_cache.open_cache(cfg) as cache:
                    try:
                        cache.wipe()
                    finally:   # and what a running loop saved meanwhile (also when the wipe says another has it open)
                        forget_learned(cfg.require_data_dir())
                print("text cache and personal model wiped")
            except DamagedCacheError as e:
                _wipe_in_place(cfg, f"the text cache could not be read ({e.__cause__})")
            except CacheError as e:
                if not disk_full(e):
                    raise
                _wipe_in_place(cfg, f"the disk is full or failing ({e})")
        elif c == "status":
            from edge_runtime import agent

            print(json.dumps(agent.status(cfg), indent=2))
        elif c == "notices":   # the version the keyboard would use: signature-checked as it is
            key = coordinator_key(cfg.public_key, readable_identity(data_dir))
            print(_notices(VersionStore(data_dir, public_key=key).current()))
        return 0
    except (ConfigError, IdentityError, *_loaded("edge_runtime.keyboard", "KeyboardError"),
            *_loaded("edge_runtime.agent", "AgentError"),
            *_loaded("edge_runtime.client", "RejectedError")) as e:
        print(f"error: {e}", file=sys.stderr)      # the user's input or setting: exit 2, as argparse does
        return EXIT_USER_ERROR
    except (VersionError, CacheError, *_loaded("edge_runtime.client", "ClientError")) as e:
        print(f"error: {e}", file=sys.stderr)      # the network, the coordinator or the disk
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:              # `| head` closed stdout: exit quietly, as Unix tools do
        exit_if_stdout_closed()
        raise
    except OSError as e:
        blocker = file_in_the_way(e)     # --data-dir naming a file: the user's input
        print(f"error: {blocker or f'{e.__class__.__name__}: {e}'}", file=sys.stderr)
        return EXIT_USER_ERROR if blocker else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _loaded(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """`names`, error classes of `module`, if this process imported it (one it did not import
    raised none): the commands import the device loop (`agent`), its network client and the
    keyboard only where they need them, so `keyboard` runs without `requests`, the trainer or
    secure aggregation, and `pause`, `wipe` and `type` without the keyboard's predictor."""
    mod = sys.modules.get(module)
    return () if mod is None else tuple(getattr(mod, name) for name in names)


def _warn_plain_http(url: str) -> None:
    if url and (warning := plain_http_warning(url)):
        print(warning, file=sys.stderr, flush=True)


def _stop_on_signals() -> threading.Event:
    """SIGTERM and Ctrl-C set the returned event: the loop ends between steps, and an answer
    coming in ends between its chunks. A second signal ends the process at once (as Ctrl-C:
    "interrupted", exit 130), for a step that waits on the network, up to its deadline."""
    stop = threading.Event()

    def handler(*_: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def _wipe_in_place(cfg: EdgeConfig, why: str) -> None:
    """A cache that cannot be emptied row by row (`why`: damaged, or a full disk): `cache.wipe_in_place`.
    The new, empty cache starts paused, as the old one's pause went with its file; its wipe mark is
    new, so a keyboard running meanwhile, which follows the new file (`TextCache._held`), forgets
    what it learned from the old one. With no room for it, the next command that needs the cache
    makes it, paused."""
    data_dir = cfg.require_data_dir()
    gone, made = wipe_in_place(data_dir)
    forget_learned(data_dir)   # and what a running loop saved while the old file went
    if made:
        after = f"learning is paused until `python -m edge_runtime resume --data-dir {data_dir}`"
    else:
        after = ("no room for a new cache yet: the next command that opens the cache makes one, paused (a running "
                 "keyboard or device loop holds the old file's space until it stops)")
    print(f"{why}: the text cache's {len(gone)} file(s) were overwritten in place and deleted. Text cache and "
          f"personal model wiped; {after}")


def _holds_device(data_dir: Path) -> bool:
    """A directory that `enroll` or `keyboard` made: it holds the identity, the text cache or an
    installed version's pointer."""
    marks = (paths.IDENTITY_FILE, paths.CACHE_DB, f"{paths.MODELS_DIR}/{paths.CURRENT_POINTER}")
    return data_dir.is_dir() and any((data_dir / f).is_file() for f in marks)


def cli() -> None:
    """The `fedkeys-device` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

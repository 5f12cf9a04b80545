"""gunicorn settings for the coordinator (deploy/README.md):

    gunicorn -c deploy/gunicorn.conf.py 'coordinator.app:create_app()'

Several workers, so /metrics uses prometheus-client's multiprocess mode: every worker writes its
counters under PROMETHEUS_MULTIPROC_DIR, which is emptied when gunicorn starts and told when a
worker exits. Logs are JSON lines, the coordinator's one format, gunicorn's own included.
"""

import os
import shutil
import sys
import tempfile

from coordinator.logs import QUIET


def _refuse(reason):
    """One line and exit 2, as the service's own settings are refused: a bad value here was a
    traceback ("Failed to read config file"), a port past 65535 an OverflowError, and 0 workers
    a server that answered nothing, saying nothing (an operator probe)."""
    print(f"refused to start: {reason}", file=sys.stderr)
    raise SystemExit(2)


def _whole(name, default, lo, hi):
    raw = os.environ.get(name, default)
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        _refuse(f"{name}={raw!r} must be a whole number from {lo} to {hi}")
    return value


def _bind(raw):
    if not raw.startswith(("unix:", "fd://")):
        host, _, port = raw.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            _refuse(f"FEDKEYS_BIND={raw!r} must be HOST:PORT with a port from 0 to 65535 (or unix:PATH)")
    return raw


bind = _bind(os.environ.get("FEDKEYS_BIND", "127.0.0.1:8400"))       # behind the TLS proxy: loopback only
workers = _whole("FEDKEYS_WORKERS", "2", 1, 256)
worker_class = "gthread"
threads = _whole("FEDKEYS_THREADS", "4", 1, 1024)
timeout = 120
forwarded_allow_ips = "127.0.0.1"

metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"fedkeys-metrics-{os.getuid()}"))

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "coordinator.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": os.environ.get("FEDKEYS_COORDINATOR_LOG_LEVEL", "INFO")},
    "loggers": {"gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                "gunicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
                **{name: {"level": level} for name, level in QUIET.items()}},
}


def on_starting(server):
    """Settings the service refuses stop gunicorn here, in one line (a worker would print the
    reason inside gunicorn's traceback, once per worker); counters from a previous run must not
    be added to this one's."""
    from coordinator.app import preflight

    _fresh_metrics_dir()
    if reason := preflight():
        server.log.error("refused to start: %s", reason)
        raise SystemExit(2)
    _fresh_metrics_dir()   # and none of the check's own


def on_reload(server):
    """A reload (SIGHUP, `systemctl reload`: a new admin token) checks the settings as a start does.
    Without it each new worker died printing gunicorn's traceback around the reason, and gunicorn
    stopped saying "Worker failed to boot"; now the master stops in one line."""
    from gunicorn.errors import HaltServer

    from coordinator.app import preflight

    if reason := preflight():
        raise HaltServer(f"refused to reload: {reason}", 2)


def _fresh_metrics_dir():
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, mode=0o700, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, metrics_dir)

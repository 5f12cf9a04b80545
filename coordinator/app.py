"""Flask app factory: `gunicorn 'coordinator.app:create_app()'` or `python -m coordinator serve`."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from coordinator import canary, deployment, keys, retention, round_end, secagg
from coordinator.api import admin, devices, public
from coordinator.api import secagg as secagg_api
from coordinator.config import MIN_ADMIN_TOKEN_CHARS, Config, ConfigError, load_config
from coordinator.db import retryable
from coordinator.errors import ApiError, DatabaseUnavailable
from coordinator.ratelimit import RateLimiter
from coordinator.rounds import disk_full, say_disk_full
from coordinator.service import Coordinator
from protocol import wire
from protocol.artifact import ArtifactError
from protocol.cli import file_in_the_way

log = logging.getLogger(__name__)

_HTTP_CODES = {400: wire.E_BAD_REQUEST, 401: wire.E_UNAUTHORIZED, 403: wire.E_FORBIDDEN, 404: wire.E_NOT_FOUND,
               405: wire.E_METHOD, 413: wire.E_TOO_LARGE, 429: wire.E_RATE_LIMITED}


def create_app(config: Config | Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `config`: a Config, a mapping of overrides on the defaults, or None to
    read file + environment (what gunicorn does)."""
    if config is None:
        cfg = _production_config()
    elif isinstance(config, Config):
        cfg = config
    else:
        cfg = Config().with_overrides(config, source="create_app")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["FEDKEYS"] = cfg
    app.json.sort_keys = False
    coordinator = _servable(cfg)
    coordinator.serving = True
    deployment.record(coordinator)   # admin commands take the service's settings as their defaults
    canary.ask_at_start(coordinator)  # a candidate pending is judged again with these settings
    secagg.restart_phase_clocks(coordinator)   # an outage does not count against a secure phase
    round_end.forget_ended_uploads(coordinator)   # a release before the upload store, or a kill, left them
    try:
        retention.sweep(coordinator)   # a kill between a prune's marks and its deletions left files
    except Exception:   # the next start sweeps again; a worker must not fail its boot on it
        log.exception("could not delete the files of versions marked before a restart")
    app.extensions["fedkeys"] = coordinator
    app.extensions["fedkeys_ratelimit"] = RateLimiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst)
    # All devices of one enrollment key share one check-in budget: a leaked key's sybils slow together.
    app.extensions["fedkeys_key_ratelimit"] = RateLimiter(cfg.rate_limit_per_key_per_minute,
                                                          cfg.rate_limit_per_key_burst)
    app.extensions["fedkeys_admin_failures"] = RateLimiter(cfg.admin_failures_per_minute, cfg.admin_failures_burst)
    if cfg.proxy_hops:   # behind nginx: the client's address and scheme are what the proxy saw
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg.proxy_hops, x_proto=cfg.proxy_hops)  # type: ignore[method-assign]
    else:
        _warn_unconfigured_proxy(app)
    for bp in (devices.bp, admin.bp, public.bp, secagg_api.bp):
        app.register_blueprint(bp)
    app.before_request(_refuse_nul)
    _watch_schema(app, coordinator)
    _register_errors(app)
    _register_metrics(app, coordinator)
    return app


def _production_config() -> Config:
    """File + environment, as gunicorn serves them: a typo must not mint a new coordinator."""
    cfg = load_config()
    if not keys.is_initialised(cfg.data_dir):
        raise ConfigError(f"{cfg.data_dir} is not a coordinator data directory; create it with "
                          f"python -m coordinator init --data-dir {cfg.data_dir}")
    deployment.require_database(cfg)   # and a database init made: a lost URL line must not mint one
    return cfg


def _servable(cfg: Config) -> Coordinator:
    """The coordinator over `cfg`, or ConfigError for a setting it must not be served with."""
    coordinator = Coordinator(cfg)
    where = "admin_token" if cfg.admin_token else f"the admin token in {cfg.data_dir}/{keys.ADMIN_TOKEN_FILE}"
    if len(coordinator.ensure_admin_token()) < MIN_ADMIN_TOKEN_CHARS:
        coordinator.close()
        raise ConfigError(f"{where} must be at least {MIN_ADMIN_TOKEN_CHARS} characters to be served (empty "
                          f"setting and no file: one is generated)")
    token = coordinator.admin_token
    if token != token.strip() or not token.isprintable() or any(ord(ch) > 0xFF for ch in token):
        # A header carries Latin-1 at most (a browser refuses to send "€", and curl's UTF-8 bytes
        # never match), and the token presented is trimmed: such a token served and no one could
        # log in. Latin-1 letters ("ä") reach it from browsers and requests, so they stay.
        coordinator.close()
        raise ConfigError(f"{where} must be printable Latin-1 characters without spaces at either end (an HTTP "
                          "header cannot carry others; plain ASCII works from every client)")
    if missing := deployment.missing_files(coordinator, check_digests=True):
        coordinator.close()
        raise ConfigError(f"the data directory {cfg.data_dir} lacks the files of version(s) {', '.join(missing)} "
                          "that devices are sent, or holds them damaged (their sha256 differs): it is older than "
                          "its database (restored from an earlier backup?) or its disk failed; restore both "
                          "from the same backup (deploy/README.md), put its files back "
                          "with import-version of the folder it was imported from (or an export of it), or take "
                          "that version out of service with the admin commands (reject, rollback), which still run")
    keys.record_served_token(cfg.data_dir, token, from_setting=bool(cfg.admin_token))   # what `admin-token` checks
    return coordinator


def preflight() -> str | None:
    """Why the settings in file + environment cannot be served, in one line, or None.

    gunicorn's master runs this before it forks (deploy/gunicorn.conf.py): a refused setting
    raised in a worker is printed inside gunicorn's own traceback, once per worker."""
    try:
        _servable(_production_config()).close()
    except (ConfigError, ArtifactError, DatabaseUnavailable) as e:
        return str(e)
    except OSError as e:
        return file_in_the_way(e) or str(e)
    return None


DISK_FULL_RETRY_S = 60   # a full disk does not clear in seconds; devices back off for a minute
_FORWARDED_FOR = "X-Forwarded-For"   # what a reverse proxy adds (deploy/nginx/fedkeys.conf)


def _warn_unconfigured_proxy(app: Flask) -> None:
    """A request that came through a proxy while proxy_hops is 0: every client then has the proxy's
    address, so all share one enrollment and one wrong-admin-token budget, and one guesser can spend
    it for everyone. Said once per process, with the fix."""
    warned: list[bool] = []

    @app.before_request
    def _proxied() -> None:
        if warned or _FORWARDED_FOR not in request.headers or not _nearby(request.remote_addr):
            return   # from the internet the header is anyone's to write: no proxy of ours sent it
        warned.append(True)
        log.warning("requests with %s arrive from %s and proxy_hops is 0: if a proxy is in front, every client "
                    "counts as its address in the per-address limits; set proxy_hops to the number of proxies "
                    "(nginx: 1)", _FORWARDED_FOR, request.remote_addr)


SCHEMA_CHECK_S = 30.0


def _watch_schema(app: Flask, coordinator: Coordinator) -> None:
    """Refuse requests, with 503, once another release has migrated the database under this
    service: an old service left running through an upgrade would go on answering devices and
    promoting candidates on the new schema while every aggregation fails.
    The revision is read every SCHEMA_CHECK_S per process (`db.held_revision`)."""
    if coordinator.read_only:
        return
    from coordinator.db import head_revision, held_revision

    mine = head_revision()
    seen = {"at": time.monotonic(), "held": mine}   # the service migrated it, or checked it, as it started

    @app.before_request
    def _schema() -> None:
        if time.monotonic() - seen["at"] >= SCHEMA_CHECK_S:
            seen["at"] = time.monotonic()
            try:
                with coordinator.monitor.connect() as conn:
                    held = held_revision(conn)
            except (DBAPIError, PoolTimeout):   # the database away: the request says so, and the scrape;
                held = seen["held"]             # a service already refusing goes on refusing
            if held != mine and seen["held"] != held:
                log.error("the database is at schema revision %s, and this service reads %s: another release "
                          "migrated it; restart this service with that release", held, mine)
            seen["held"] = held
        if seen["held"] != mine:
            raise ApiError(503, wire.E_INTERNAL, f"the database was migrated (schema revision {seen['held']}) by "
                                                 f"another release; this service reads {mine} and must be restarted",
                           retry_after=60)


def _refuse_nul() -> None:
    """A NUL in the path (`/versions/%00/pin`), the query or a header (X-FedKeys-Device) is refused
    before any view: ids reach the database, whose text (PostgreSQL's) refuses NUL with a 500.
    JSON bodies are checked where they are parsed (`api.common.json_body`)."""
    parts = (request.path, *request.args.keys(), *request.args.values(), *request.headers.values())
    if any("\x00" in p for p in parts):
        raise ApiError(400, wire.E_BAD_REQUEST, "a NUL character in the request's path, query or headers")


def _nearby(address: str | None) -> bool:
    """A loopback or private address: where a reverse proxy of this deployment would connect from."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


def _error(status: int, body: dict[str, Any], retry_after: float | None = None) -> Response:
    resp = jsonify(body)
    resp.status_code = status
    if retry_after is not None:
        resp.headers[wire.RETRY_AFTER_HEADER] = str(max(1, int(retry_after + 0.999)))
    return resp


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> Response:
        return _error(e.status, e.body(), e.retry_after)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        status = e.code or 500
        code = _HTTP_CODES.get(status, wire.E_BAD_REQUEST if status < 500 else wire.E_INTERNAL)
        return _error(status, wire.ErrorBody(code, e.description or e.name).to_dict())

    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeout)
    def _database_down(e: DBAPIError | PoolTimeout) -> Response:
        # A database server down or out of reach, SQLite locked past its busy timeout, PostgreSQL
        # turned read-only (an InternalError, not an OperationalError), or every pooled connection
        # in use past the pool's timeout (a burst of uploads; it was a 500 with a traceback): the
        # request may be retried as it is, so 503 with Retry-After and one log line. Any other
        # database error goes on as any exception does: a full disk is a 503 too, the rest (no
        # such table) a fault, a 500 with its traceback.
        if (trouble := retryable(e)) is None:
            return _internal(e)
        said, line = trouble
        log.error("database %s on %s %s: %s", said, request.method, request.path, line)
        return _error(503, wire.ErrorBody(wire.E_INTERNAL, f"the database is {said}; retry later").to_dict(),
                      retry_after=5)

    @app.errorhandler(Exception)
    def _internal(e: Exception) -> Response:
        if disk_full(e):   # not a fault of the request: 503, and one log line a minute
            say_disk_full(f"{request.method} {request.path}", e, app.extensions["fedkeys"].config.data_dir)
            return _error(503, wire.ErrorBody(wire.E_INTERNAL, "the coordinator's disk is full; retry later")
                          .to_dict(), retry_after=DISK_FULL_RETRY_S)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, wire.ErrorBody(wire.E_INTERNAL, "internal error").to_dict(), retry_after=5)


# The request counter's `method` label: a client's own method name ("FOO") would be a new series
# each, so anyone who could reach the service could grow Prometheus's storage without limit.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def _register_metrics(app: Flask, coordinator: Coordinator) -> None:
    @app.before_request
    def _start() -> None:
        g.t0 = time.perf_counter()

    @app.after_request
    def _count(resp: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in HTTP_METHODS else "other"
        coordinator.metrics.requests.labels(endpoint, method, str(resp.status_code)).inc()
        elapsed = time.perf_counter() - g.get("t0", time.perf_counter())
        coordinator.metrics.request_seconds.labels(endpoint).observe(elapsed)
        return resp

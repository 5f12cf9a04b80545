"""Unauthenticated endpoints: health, OpenAPI document, Prometheus metrics, the dashboard page (no data)."""

from __future__ import annotations

import shutil

from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from sqlalchemy import text

from coordinator import openapi
from coordinator.api.common import coord
from coordinator.blobs import disk_short
from coordinator.errors import ApiError
from coordinator.metrics import CONTENT_TYPE_LATEST
from protocol import wire

bp = Blueprint("public", __name__)


@bp.get(wire.PATH_HEALTH)
def health() -> Response:
    with coord().monitor.connect() as conn:   # waits seconds for a locked database, not 30
        conn.execute(text("SELECT 1"))
    # A full disk answered {"ok": true} while every upload and aggregation failed: a load balancer
    # or monitor asking this endpoint learned nothing. Under MIN_FREE_BYTES it says so (`blobs.disk_short`), with 503.
    if (short := disk_short(shutil.disk_usage(coord().blobs.root).free)) is not None:
        raise ApiError(503, wire.E_INTERNAL, short, retry_after=60)
    return jsonify({"ok": True})


@bp.get(wire.PATH_OPENAPI)
def openapi_doc() -> Response:
    return jsonify(openapi.build())


@bp.get(wire.PATH_METRICS)
def metrics() -> Response:
    return Response(coord().metrics.render(), mimetype=CONTENT_TYPE_LATEST.split(";")[0])


# The page is public HTML with no data in it; its script asks for the admin token and then
# reads /v1/admin/dashboard with it. Scripts, styles and Chart.js come from this server only.
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                 "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


@bp.get("/dashboard")
def dashboard() -> Response:
    resp = send_from_directory(current_app.static_folder, "dashboard.html", mimetype="text/html", max_age=0)
    resp.headers["Content-Security-Policy"] = DASHBOARD_CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp

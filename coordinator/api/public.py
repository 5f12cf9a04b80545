"""Unauthenticated endpoints: health, OpenAPI document, Prometheus metrics, the dashboard page (no data)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from sqlalchemy import text

from coordinator import openapi
from coordinator.api.common import coord
from coordinator.metrics import CONTENT_TYPE_LATEST
from protocol import wire

bp = Blueprint("public", __name__)


@bp.get(wire.PATH_HEALTH)
def health() -> Response:
    with coord().engine.connect() as conn:
        conn.execute(text("SELECT 1"))
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

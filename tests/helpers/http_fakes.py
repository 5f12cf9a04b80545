"""A hostile coordinator's HTTP side for the device tests: a handler that answers with raw JSON
bytes and logs nothing. (No Flask here: the slim edge environment runs these tests too.)"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


class JsonReplyHandler(BaseHTTPRequestHandler):
    """Subclasses answer in `do_POST` with `reply_json`."""

    def reply_json(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

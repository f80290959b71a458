"""A real Flask/Werkzeug upstream for the path tests: ``/admin`` and ``/admin/<path:rest>``
record every hit (the raw request target as Werkzeug's server received it); everything else
is a catch-all; ``/reset-link`` answers the absolute link Flask builds from ``Host`` (what a
password-reset mail would carry). ``GET /__hits`` (asked directly, not through the sidecar)
answers the record.

Run as ``python flask_app.py``: it serves on a free loopback port and prints the port.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request, url_for
from werkzeug.serving import make_server

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
HITS: dict[str, list[str]] = {"admin": [], "other": []}
app = Flask(__name__, static_folder=None)


def _target() -> str:
    return str(request.environ.get("REQUEST_URI") or request.full_path)


@app.route("/__hits")
def hits() -> Response:
    return jsonify(HITS)


@app.route("/reset-link")
def reset_link() -> str:
    # What a password-reset mail would carry: built from the request's Host.
    return url_for("reset", token="t", _external=True)


@app.route("/reset")
def reset() -> str:
    return "reset form"


@app.route("/admin", defaults={"rest": ""}, methods=METHODS)
@app.route("/admin/<path:rest>", methods=METHODS)
def admin(rest: str) -> str:
    HITS["admin"].append(_target())
    return "admin area"


@app.route("/", defaults={"rest": ""}, methods=METHODS)
@app.route("/<path:rest>", methods=METHODS)
def other(rest: str) -> str:
    HITS["other"].append(_target())
    return "somewhere else"


if __name__ == "__main__":
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.port, flush=True)
    server.serve_forever()

"""A model server that is not Aegis's: the standard library's HTTP server, knowing nothing of Aegis.

    python -m tests.e2e.foreign_server --port P --version V

`POST /v1/models/<model>:predict` answers `{"predictions": [...]}` with an `x-model-version`
header (so a test can tell the arms apart), `GET /health` answers 200, or 503 after
`POST /admin/health {"healthy": false}` (how a test makes it fail its health check while it
still answers predictions: traffic can then leave it only because Aegis's config changed).
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server: ForeignServer
    # Keep-alive, as Envoy expects of an upstream; every answer carries its Content-Length.
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/health":
            healthy = self.server.healthy.is_set()
            self._answer(200 if healthy else 503, {"healthy": healthy})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if self.path == "/admin/health":
            (self.server.healthy.set if body["healthy"] else self.server.healthy.clear)()
            self._answer(200, {"healthy": self.server.healthy.is_set()})
        elif self.path.startswith("/v1/models/") and self.path.endswith(":predict"):
            self._answer(200, {"predictions": [len(str(instance)) for instance in body.get("instances", [])]})
        else:
            self._answer(404, {"error": "not found"})

    def _answer(self, status: int, document: object) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-model-version", self.server.version)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: thousands of predictions would flood the test's log."""


class ForeignServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default listen backlog of 5 refuses Envoy's burst of new connections

    def __init__(self, port: int, version: str) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.version = version
        self.healthy = threading.Event()
        self.healthy.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    ForeignServer(args.port, args.version).serve_forever()


if __name__ == "__main__":
    main()

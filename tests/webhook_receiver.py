"""A webhook receiver process for notification tests: records every POST, or hangs on it.

    python -m tests.webhook_receiver --port P --log FILE [--hang]

Each request becomes one JSON line in FILE: `{"path", "headers", "body"}` (the body as
received, so a test can check a signature over its exact bytes), then a 200. With
`--hang` it never answers: a receiver that accepts connections and stalls, the worst
kind for a sender that waits.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Receiver(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, port: int, log: Path, *, hang: bool) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.log, self.hang, self.lock = log, hang, threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.server.hang:
            time.sleep(3600)
        record = {"path": self.path, "headers": dict(self.headers.items()), "body": body.decode()}
        with self.server.lock, self.server.log.open("a") as log:
            log.write(json.dumps(record) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the JSON lines are the record."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    Receiver(args.port, args.log, hang=args.hang).serve_forever()


if __name__ == "__main__":
    main()

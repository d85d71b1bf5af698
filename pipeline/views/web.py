"""The worker's small HTTP side door: ``GET /status`` (JSON) and ``POST /query`` (SQL -> JSON).

``/query`` exists for the embedded default: chDB allows one engine per data directory, held by the
worker, so ``cem query`` and ``cem top`` read through the running worker instead of opening it.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

log = logging.getLogger("cem.web")


def _default(value: Any) -> Any:
    from pipeline.views.query import json_cell

    cell = json_cell(value)
    return cell if cell is not value else str(value)


def start_status_server(
    port: int,
    status: Callable[[], dict],
    query: Callable[[str], tuple[list[str], list[tuple]]],
    host: str = "0.0.0.0",
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") in ("/status", ""):
                self._reply(200, status())
            else:
                self._reply(404, {"error": "not found: use GET /status or POST /query"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/query":
                self._reply(404, {"error": "not found"})
                return
            sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            try:
                columns, rows = query(sql)
            except Exception as exc:  # a bad query is the caller's error, not the worker's
                self._reply(400, {"error": str(exc)[:2000]})
                return
            self._reply(200, {"columns": columns, "rows": rows})

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body, default=_default).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="cem-status", daemon=True).start()
    return server

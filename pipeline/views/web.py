"""The worker's small HTTP side door: ``GET /status``, ``/healthz``, ``/readyz``, ``/customers/ID`` (the
360° view, :mod:`pipeline.views.customer`) and ``POST /query`` (SQL -> JSON).

``/query`` exists for the embedded default: chDB allows one engine per data directory, held by the
worker, so ``cem query`` and ``cem top`` read through the running worker instead of opening it. The
worker answers it with :class:`pipeline.views.reads.ReadOnlyQueries`, which can only read cem's tables;
``/customers/ID`` reads through the same door, and is served when ``/query`` is.

Exposure: loopback by default. Any other address needs a bearer token (``CEM_WEB_TOKEN``), compared in
constant time, on every path but ``/healthz`` and ``/readyz``, which the kubelet probes without one
and which say no more than live/ready.

A client cannot hold a handler thread: the SQL body needs a ``Content-Length`` of at most
:data:`MAX_BODY_BYTES`, and every read has a socket timeout and the whole body a deadline.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, NamedTuple
from urllib.parse import unquote, urlsplit

from clickhouse_connect.driver.exceptions import Error as ClickHouseError

from schemas.contract import MAX_ID_CHARS

log = logging.getLogger("cem.web")

MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
OPEN_PATHS = ("/healthz", "/readyz")  # the kubelet's probes carry no token

Query = Callable[[str], tuple[list[str], list[tuple]]]
Probe = Callable[[], tuple[bool, dict]]
CustomerView = Callable[[str], dict]
MAX_CUSTOMER_ID_CHARS = MAX_ID_CHARS  # as long as the contract lets a customer id be


class Refusal(Exception):
    """An error answer: HTTP ``code`` with ``{"error": message}``."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}


class Routes(NamedTuple):
    status: Callable[[], dict]
    query: Query | None
    health: Probe | None
    ready: Probe | None
    token: str
    customer: CustomerView | None = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.9.0.1", "::1", "localhost", "0.0.0.0", "", "::", "10.1.2.3", "cem")]
    [True, True, True, True, False, False, False, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "" (every interface) or a host name: not provably local
        return False


def start_status_server(
    port: int,
    status: Callable[[], dict],
    query: Query | None,
    *,
    host: str = "127.0.0.1",
    token: str = "",
    health: Probe | None = None,
    ready: Probe | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
    customer: CustomerView | None = None,
) -> ThreadingHTTPServer:
    """Serve on ``host:port`` (0: any free port) in a daemon thread; ``query=None`` answers /query with 403."""
    if not token and not is_loopback(host):
        raise ValueError(f"refusing to serve /status and /query on {host!r} without a token: set CEM_WEB_TOKEN "
                         "(clients send it as 'Authorization: Bearer <token>') or bind 127.0.0.1")
    handler = type("StatusHandler", (StatusHandler,), {"timeout": timeout_s})
    server_class = _Server6 if ":" in host else _Server
    server = server_class((host, port), handler)
    server.routes = Routes(status, query, health, ready, token, customer)
    threading.Thread(target=server.serve_forever, name="cem-status", daemon=True).start()
    return server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: Routes


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusHandler(BaseHTTPRequestHandler):
    """One request; ``timeout`` (seconds) bounds every socket read and the body as a whole."""

    timeout: ClassVar[float] = REQUEST_TIMEOUT_S
    server: _Server
    _body_taken = False  # the body was read (or given up on): never read twice

    def do_GET(self) -> None:  # http.server's naming
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    # -- routes ---------------------------------------------------------------------------------
    def _get(self, path: str) -> tuple[int, dict]:
        routes = self.server.routes
        if path in ("/status", ""):
            return 200, routes.status()
        if path == "/healthz":
            return _probe(routes.health)
        if path == "/readyz":
            return _probe(routes.ready)
        if path == "/query":
            raise Refusal(405, "use POST /query with the SQL as the body", {"Allow": "POST"})
        if path.startswith("/customers/"):
            return 200, self._customer(unquote(path.removeprefix("/customers/")))
        raise Refusal(404, "not found: use GET /status, /healthz, /readyz, /customers/ID or POST /query")

    def _customer(self, customer_id: str) -> dict:
        view = self.server.routes.customer
        if view is None:
            raise Refusal(403, "/customers is only served for the embedded engine")
        if not customer_id or len(customer_id) > MAX_CUSTOMER_ID_CHARS or not customer_id.isprintable():
            raise Refusal(400, f"a customer id is 1-{MAX_CUSTOMER_ID_CHARS} printable characters")
        try:
            return view(customer_id)
        except (ValueError, ClickHouseError) as exc:
            raise Refusal(400, _message(exc)) from None

    def _post(self, path: str) -> tuple[int, dict]:
        if path != "/query":
            raise Refusal(404, "not found: use POST /query")
        if self.server.routes.query is None:
            raise Refusal(403, "/query is only served for the embedded engine")
        sql = self._read_sql()
        try:
            columns, rows = self.server.routes.query(sql)
        except (ValueError, ClickHouseError) as exc:  # a refused or failing query is the caller's error
            raise Refusal(400, _message(exc)) from None
        return 200, {"columns": columns, "rows": rows}

    # -- the request ----------------------------------------------------------------------------
    def _serve(self, route: Callable[[str], tuple[int, dict]]) -> None:
        headers: dict[str, str] = {}
        try:
            path = urlsplit(self.path).path.rstrip("/")
            if path not in OPEN_PATHS:
                self._authorize()
            code, body = route(path)
        except Refusal as refusal:
            code, body, headers = refusal.code, {"error": refusal.message}, refusal.headers
            self._discard_body()  # unread bytes would turn the close into a reset before the answer is read
        except Exception:  # a bug here must not show its traceback to the client
            log.exception("the status server failed on %s %s", self.command, self.path)
            code, body = 500, {"error": "internal error"}
        self._reply(code, body, headers)

    def _authorize(self) -> None:
        token = self.server.routes.token
        if not token:
            return
        presented = self.headers.get("Authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
            raise Refusal(401, "a bearer token is required (Authorization: Bearer <CEM_WEB_TOKEN>)",
                          {"WWW-Authenticate": 'Bearer realm="cem"'})

    def _read_sql(self) -> str:
        try:
            return self._read_body().decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(400, "the SQL must be UTF-8") from None

    def _read_body(self) -> bytes:
        self._body_taken = True
        length = self._content_length()
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body stays unread
            raise Refusal(413, f"the SQL is over {MAX_BODY_BYTES} bytes")
        return self._read_exactly(length)

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise Refusal(411, "send the SQL with a Content-Length (chunked bodies are not read)")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise Refusal(411, "Content-Length required")
        if len(set(values)) != 1 or not re.fullmatch(r"[0-9]{1,12}", values[0].strip()):
            self.close_connection = True
            raise Refusal(400, f"invalid Content-Length: {', '.join(values)[:40]}")
        return int(values[0])

    def _read_exactly(self, length: int) -> bytes:
        """``length`` bytes within one ``timeout`` in total, so a trickling client cannot hold the thread."""
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        remaining = length
        try:
            while remaining:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(remaining)
                if not chunk:
                    raise Refusal(400, f"the body ended {remaining} bytes short of its Content-Length")
                chunks.append(chunk)
                remaining -= len(chunk)
        except TimeoutError:
            self.close_connection = True
            raise Refusal(408, f"the body did not arrive within {self.timeout:g} s") from None
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(chunks)

    def _discard_body(self) -> None:
        """Read a small body nobody will use (bounded like any body), so the answer reaches the client."""
        if self._body_taken or self.command != "POST":
            return
        try:
            self._read_body()
        except Refusal:
            pass

    # -- the answer -----------------------------------------------------------------------------
    def _reply(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, default=_default).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unknown method...) as JSON too."""
        self.close_connection = True
        self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def log_message(self, *args: Any) -> None:
        pass


def _probe(check: Probe | None) -> tuple[int, dict]:
    """Kubernetes conventions: 200 when the check passes, 503 when not (or when it fails)."""
    if check is None:
        return 200, {"status": "ok"}
    try:
        ok, body = check()
    except Exception:
        log.exception("health check failed")
        return 503, {"status": "error"}
    return (200 if ok else 503), body


def _message(exc: Exception) -> str:
    """The engine's or the guard's message, without ClickHouse's stack trace."""
    return str(exc).split("Stack trace")[0].strip()[:2000]


def _default(value: Any) -> Any:
    from pipeline.views.query import json_cell

    cell = json_cell(value)
    return cell if cell is not value else str(value)

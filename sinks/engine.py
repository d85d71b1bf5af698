"""The embedded ClickHouse engine in a process of its own, shared by several workers.

chDB runs the real engine in-process, and one process only may open an engine directory. To run
several workers on one machine against the embedded engine, one process (``cem engine``) opens it
and serves the few statements a :class:`~sinks.clickhouse.Connection` makes (``query``, ``rows``,
``command``, ``insert``) to :class:`EngineConnection` clients, one statement at a time, exactly as
they would run in-process; and the read side (``read``: ``cem query``, ``/query``, the 360° view)
through the read-only session the engine process was given, never the writers'. Each worker keeps its own sink, marks and deduplication tokens, as
replicas of the worker do against a ClickHouse server in production: the engine adds nothing to
the exactness protocol and takes nothing from it.

The socket is a Unix socket in the data directory, created mode 0600, and every client proves it
knows the key in ``engine.key`` (0600) beside it: nothing listens on the network, and only the
directory's owner can connect. Values travel as pickles, which is only safe between processes
that trust each other, hence both.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from sinks.clickhouse import Connection

log = logging.getLogger("cem.engine")

SCHEME = "engine://"


@dataclass(frozen=True, slots=True)
class Rows:
    """What a query answers, as much of clickhouse-connect's ``QueryResult`` as cem reads."""

    column_names: tuple[str, ...]
    result_rows: list[tuple]


def engine_url(socket_path: Path) -> str:
    """The ``clickhouse_url`` of workers served by the engine at ``socket_path``.

    >>> engine_url(Path("/data/engine.sock"))
    'engine:///data/engine.sock'
    """
    return f"{SCHEME}{socket_path}"


def engine_socket(data_dir: Path) -> Path:
    """Where the shared engine of a data directory listens (its chDB directory beside it)."""
    return data_dir / "engine.sock"


def serving(data_dir: Path) -> EngineConnection | None:
    """A connection to the engine serving ``data_dir``, if one is listening there."""
    path = engine_socket(data_dir)
    if not path.is_socket():
        return None
    connection = EngineConnection(engine_url(path))
    return connection if answers(connection) else None  # not: a socket left by an engine that is gone


def socket_of(url: str) -> Path:
    return Path(url.removeprefix(SCHEME))


def _key_of(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.stem + ".key")


class EngineServer:
    """Serves one engine connection (a ``chdb://`` :class:`~sinks.clickhouse.Connection`) on a Unix socket."""

    def __init__(self, connection: Any, socket_path: Path,
                 read: Callable[[str], tuple[list[str], list[tuple]]] | None = None):
        self._connection = connection
        self._socket = socket_path
        self._listener: Listener | None = None
        self._ops: dict[str, Callable[..., Any]] = {
            "query": self._query, "command": connection.command, "insert": connection.insert,
            "read": read or self._no_reads,
        }

    def start(self) -> None:
        """Write a fresh key, then listen (the socket and the key readable by the owner only)."""
        self._socket.unlink(missing_ok=True)
        key = _key_of(self._socket)
        key.unlink(missing_ok=True)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        previous = os.umask(0o177)  # the socket file is created 0600
        try:
            self._listener = Listener(str(self._socket), "AF_UNIX", authkey=key.read_text().encode())
        finally:
            os.umask(previous)

    def serve_forever(self) -> None:
        assert self._listener is not None, "start() first"
        while True:
            try:
                client = self._listener.accept()
            except (OSError, EOFError, AuthenticationError) as exc:  # failed the handshake: not served
                if self._listener is None:
                    return
                log.warning("engine client refused: %s", exc)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="cem-engine-client").start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _serve(self, client: Any) -> None:
        with client:
            while True:
                try:
                    op, args, kwargs = client.recv()
                except (EOFError, OSError):
                    return  # the worker went away
                try:
                    reply = ("ok", self._ops[op](*args, **kwargs))
                except Exception as exc:  # the worker's sink decides what a failure means
                    reply = ("error", exc)
                try:
                    client.send(reply)
                except (OSError, ValueError):
                    return
                except Exception as exc:  # an answer or an exception that does not pickle
                    client.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))

    def _query(self, sql: str, settings: dict[str, Any] | None = None, **kwargs: Any) -> Rows:
        result = self._connection.query(sql, settings, **kwargs)
        return Rows(tuple(result.column_names), list(result.result_rows))

    @staticmethod
    def _no_reads(sql: str) -> tuple[list[str], list[tuple]]:
        raise NotImplementedError("this engine serves no read side")


class EngineConnection(Connection):
    """A :class:`~sinks.clickhouse.Connection` whose statements run in the engine process."""

    def __init__(self, url: str):  # no engine of its own: nothing of Connection's to set up
        self._socket = socket_of(url)
        self._client: Any = None
        self._lock = threading.Lock()  # one statement at a time on this worker's socket

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                if self._client is None:
                    self._client = Client(str(self._socket), "AF_UNIX", authkey=_key_of(self._socket).read_text().encode())
                self._client.send((op, args, kwargs))
                status, value = self._client.recv()
            except (OSError, EOFError) as exc:  # the engine restarting: the sink retries
                self._client = None
                raise ConnectionError(f"the ClickHouse engine at {self._socket} is not answering: {exc}") from exc
        if status == "error":
            raise value
        return value

    def query(self, sql: str, settings: dict[str, Any] | None = None, **kwargs: Any) -> Rows:
        rows: Rows = self._call("query", sql, settings, **kwargs)
        return rows

    def rows(self, sql: str, settings: dict[str, Any] | None = None) -> list[tuple]:
        return self.query(sql, settings).result_rows

    def command(self, sql: str) -> Any:
        return self._call("command", sql)

    def insert(self, table: str, columns: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: dict[str, Any]) -> None:
        self._call("insert", table, [list(c) for c in columns], list(column_names), settings)

    def read(self, sql: str) -> tuple[list[str], list[tuple]]:
        """``sql`` through the engine's read side (checked there: only reads of cem's tables);
        a refusal is the engine's :class:`~pipeline.views.reads.QueryRefused`."""
        columns, rows = self._call("read", sql)
        return columns, rows

    def sibling(self) -> Any:
        raise NotImplementedError("a worker of a shared engine reads through read(), on the engine's read-only session")


def wait_for(url: str, timeout_s: float) -> bool:
    """Whether the engine at ``url`` answers a statement within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    connection = EngineConnection(url)
    while not answers(connection):  # not listening yet, or its key not written yet
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def answers(connection: EngineConnection) -> bool:
    """Whether an engine listens on the connection's socket, with the key beside it."""
    try:
        return connection.rows("SELECT 1") == [(1,)]
    except (ConnectionError, FileNotFoundError):
        return False

"""The worker's HTTP side door and the read-only guard behind ``/query``.

Three parts:

* the guard's walk of ``EXPLAIN AST`` text captured from chDB 4.4 (in-process, no engine);
* the web server's exposure and robustness, against real sockets (in-process, a fake query function);
* every attack of the security review against a real chDB behind a real server, in one subprocess
  (chDB allows one engine per process and the pytest process is shared): each must be refused and
  leave every table, row and database as it was.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.views import top
from pipeline.views.reads import READ_LIMITS, QueryRefused, cem_tables, check_read_only
from pipeline.views.web import MAX_BODY_BYTES, start_status_server

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"


# ---------------------------------------------------------------------------------------------------------
# The guard on canned EXPLAIN AST output (TabSeparated, as chDB prints it)
# ---------------------------------------------------------------------------------------------------------

def _select(*rows: str, tables: str = "cem.alerts") -> str:
    """The EXPLAIN AST of ``SELECT <rows> FROM <tables>``: the rows are the select list's, at depth 4."""
    head = ["SelectWithUnionQuery (children 1)", " ExpressionList (children 1)", "  SelectQuery (children 2)",
            f"   ExpressionList (children {len(rows)})"]
    tail = ["   TablesInSelectQuery (children 1)", "    TablesInSelectQueryElement (children 1)",
            "     TableExpression (children 1)", f"      TableIdentifier {tables}"]
    return "\n".join([*head, *(f"    {row}" for row in rows), *tail]) + "\n"


CANNED: dict[str, str] = {
    "SELECT channel, sum(events) AS events FROM cem.kpi_minute GROUP BY channel": (
        "SelectWithUnionQuery (children 1)\n ExpressionList (children 1)\n  SelectQuery (children 3)\n"
        "   ExpressionList (children 2)\n    Identifier channel\n    Function sum (alias events) (children 1)\n"
        "     ExpressionList (children 1)\n      Identifier events\n   TablesInSelectQuery (children 1)\n"
        "    TablesInSelectQueryElement (children 1)\n     TableExpression (children 1)\n"
        "      TableIdentifier cem.kpi_minute\n   ExpressionList (children 1)\n    Identifier channel\n"
    ),
    "WITH x AS (SELECT * FROM cem.kpi_minute) SELECT count() FROM x": (
        "SelectWithUnionQuery (children 1)\n ExpressionList (children 1)\n  SelectQuery (children 3)\n"
        "   ExpressionList (children 1)\n    WithElement (children 1)\n     Subquery (children 1)\n"
        "      SelectWithUnionQuery (children 1)\n       ExpressionList (children 1)\n"
        "        SelectQuery (children 2)\n         ExpressionList (children 1)\n          Asterisk\n"
        "         TablesInSelectQuery (children 1)\n          TablesInSelectQueryElement (children 1)\n"
        "           TableExpression (children 1)\n            TableIdentifier cem.kpi_minute\n"
        "   ExpressionList (children 1)\n    Function count (children 1)\n     ExpressionList\n"
        "   TablesInSelectQuery (children 1)\n    TablesInSelectQueryElement (children 1)\n"
        "     TableExpression (children 1)\n      TableIdentifier x\n"
    ),
    # A literal that looks like rows: TabSeparated escapes it onto one line.
    "SELECT 'x\\n  TableIdentifier system.users' AS s FROM cem.alerts":
        _select("Literal \\'x\\\\n  TableIdentifier system.users\\' (alias s)"),
    "SELECT a.alert_id FROM cem.alerts AS a WHERE a.customer_id IN (SELECT customer_id FROM cem.customer_state)": (
        "SelectWithUnionQuery (children 1)\n ExpressionList (children 1)\n  SelectQuery (children 3)\n"
        "   ExpressionList (children 1)\n    Identifier a.alert_id\n   TablesInSelectQuery (children 1)\n"
        "    TablesInSelectQueryElement (children 1)\n     TableExpression (children 1)\n"
        "      TableIdentifier cem.alerts (alias a)\n   Function in (children 1)\n    ExpressionList (children 2)\n"
        "     Identifier a.customer_id\n     Subquery (children 1)\n      SelectWithUnionQuery (children 1)\n"
        "       ExpressionList (children 1)\n        SelectQuery (children 2)\n         ExpressionList (children 1)\n"
        "          Identifier customer_id\n         TablesInSelectQuery (children 1)\n"
        "          TablesInSelectQueryElement (children 1)\n           TableExpression (children 1)\n"
        "            TableIdentifier cem.customer_state\n"
    ),
}

REFUSED_ASTS: dict[str, tuple[str, str]] = {
    "DROP TABLE cem.alerts": ("DropQuery  cem.alerts (children 1)\n Identifier cem.alerts\n", "only SELECT"),
    "INSERT INTO FUNCTION file('/tmp/x.csv') SELECT 1": (
        ("InsertQuery   (children 2)\n Function file (children 1)\n  ExpressionList (children 1)\n"
         "   Literal \\'/tmp/x.csv\\'\n SelectWithUnionQuery (children 1)\n"), "only SELECT"),
    "SELECT * FROM file('/etc/passwd')": (
        _select("Asterisk", tables="x").replace("TableIdentifier x", "Function file (children 1)")
        + "       ExpressionList (children 1)\n        Literal \\'/etc/passwd\\'\n", "table functions"),
    "SELECT file('/etc/passwd') FROM cem.alerts": (_select("Function file (children 1)"), "file() is refused"),
    "SELECT hostName() FROM cem.alerts": (_select("Function hostName (children 1)"), "hostName() is refused"),
    "SELECT dictGetString('d', 'a', 1) FROM cem.alerts": (_select("Function dictGetString (children 1)"), "dictGetString"),
    "SELECT * FROM system.users": (_select("Asterisk", tables="system.users"), "only cem's tables"),
    "SELECT * FROM cem.secrets": (_select("Asterisk", tables="cem.secrets"), "only cem's tables"),
    "SELECT * FROM a.b.c": (_select("Asterisk", tables="a.b.c"), "plain names only"),
    "SELECT 1 IN system.tables FROM cem.alerts": (
        _select("Function in (children 1)", "ExpressionList (children 2)", "Literal UInt64_1", "Identifier system.tables"),
        "system database"),
    "SELECT 1 FROM cem.alerts SETTINGS max_threads = 1": (_select("Literal UInt64_1") + "   Set\n", "SETTINGS"),
    "SELECT 1 FROM cem.alerts INTO OUTFILE '/tmp/x'": (_select("Literal UInt64_1") + " Literal \\'/tmp/x\\'\n", "INTO OUTFILE"),
    "SELECT 1 FROM cem.alerts FORMAT CSV": (_select("Literal UInt64_1") + " Identifier CSV\n", "FORMAT"),
    "SELECT 1; SELECT 2": ("SelectWithUnionQuery (children 1)\nSelectWithUnionQuery (children 1)\n", "one statement"),
    # A backquoted alias with a line break adds a row of its own (EXPLAIN prints names verbatim).
    "SELECT 1 AS `x\\n Literal 1` FROM cem.alerts": (_select("Literal UInt64_1 (alias x") + " Literal 1)\n", "OUTFILE"),
    "SELECT 1 AS `x\\n    Function file` FROM cem.alerts": (_select("Literal UInt64_1 (alias x", "Function file)"), "plain function names"),
    "SELECT `my db`.t FROM cem.alerts": (_select("Identifier my db.t"), "names with spaces"),
    "SELECT {x:String} FROM cem.alerts": (_select("QueryParameter x:String"), "QueryParameter is not allowed"),
}


@pytest.mark.parametrize("sql", sorted(CANNED))
def test_guard_accepts_reads_of_cem_tables(sql: str):
    check_read_only(sql, CANNED.__getitem__)


@pytest.mark.parametrize("sql", sorted(REFUSED_ASTS))
def test_guard_refuses(sql: str):
    ast, reason = REFUSED_ASTS[sql]
    with pytest.raises(QueryRefused, match=re.escape(reason)):
        check_read_only(sql, lambda _: ast)


def test_guard_tables_default_to_the_ddl_and_can_be_narrowed():
    assert {"touchpoints_enriched", "kpi_minute", "dead_letters", "customer_state", "alerts"} <= cem_tables("cem")
    sql = "SELECT channel, sum(events) AS events FROM cem.kpi_minute GROUP BY channel"
    with pytest.raises(QueryRefused, match="only cem's tables"):
        check_read_only(sql, CANNED.__getitem__, tables={"alerts"})
    with pytest.raises(QueryRefused, match="only other's tables"):
        check_read_only(sql, CANNED.__getitem__, database="other")


def test_read_limits_make_the_session_read_only_last():
    assert list(READ_LIMITS)[-1] == "readonly" and READ_LIMITS["readonly"] == 1
    assert READ_LIMITS["result_overflow_mode"] == "throw"  # a cut KPI sum would look right and be wrong


# ---------------------------------------------------------------------------------------------------------
# The web server against real sockets (a fake query function: no engine)
# ---------------------------------------------------------------------------------------------------------

def fake_query(sql: str) -> tuple[list[str], list[tuple]]:
    if sql == "refuse me":
        raise QueryRefused("refused: a reason for the user")
    if sql == "crash me":
        raise RuntimeError("an internal detail that must not leak")
    return ["sql", "at", "amount", "raw"], [(sql, datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc), Decimal("1.5"), b"ab")]


@contextmanager
def serving(query: Any = fake_query, **kwargs: Any) -> Iterator[int]:
    """A status server on a free port for the block; yields the port."""
    status = kwargs.pop("status", lambda: {"pid": 1})
    server = start_status_server(0, status, query, timeout_s=kwargs.pop("timeout_s", 1.0), **kwargs)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def request(port: int, method: str, path: str, body: str | bytes | None = None, token: str | None = None,
            host: str = "127.0.0.1", timeout: float = 15.0) -> tuple[int, dict, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.headers
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (what arrived before a reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (what arrived before a reset)."""
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return b"".join(chunks)


def status_code(response: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(match[1]) if match else None


def json_body(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    candidates = []
    try:
        candidates.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        listing = subprocess.run(["ip", "-4", "addr"], check=False, capture_output=True, text=True, timeout=5).stdout
        candidates += re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", listing)
    except (OSError, subprocess.SubprocessError):
        pass
    for address in candidates:
        if not ipaddress.ip_address(address).is_loopback and _is_local(address):
            return address
    return None


def _is_local(address: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((address, 0))
        return True
    except OSError:
        return False


def test_binds_loopback_by_default():
    with serving() as port:
        assert request(port, "GET", "/status")[:2] == (200, {"pid": 1})
        address = non_loopback_address()
        if address is None:
            pytest.skip("this machine has no non-loopback address to try")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.0.2.77", "worker.example"])
def test_refuses_to_serve_beyond_loopback_without_a_token(host: str):
    with pytest.raises(ValueError, match="CEM_WEB_TOKEN"):
        start_status_server(0, dict, fake_query, host=host)


def test_a_token_guards_everything_but_the_probes():
    probes = {"health": lambda: (True, {"status": "live"}), "ready": lambda: (False, {"status": "starting"})}
    with serving(host="0.0.0.0", token=TOKEN, **probes) as port:
        for token in (None, "wrong", TOKEN + "x"):
            code, body, headers = request(port, "GET", "/status", token=token)
            assert code == 401 and "token" in body["error"]
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert request(port, "POST", "/query", "SELECT 1", token=token)[0] == 401
        assert request(port, "GET", "/status", token=TOKEN)[:2] == (200, {"pid": 1})
        assert request(port, "POST", "/query", "SELECT 1", token=TOKEN)[0] == 200
        assert request(port, "GET", "/healthz")[:2] == (200, {"status": "live"})
        assert request(port, "GET", "/readyz")[:2] == (503, {"status": "starting"})
        address = non_loopback_address()
        if address is not None:  # 0.0.0.0 really is reachable from outside, and only with the token
            assert request(port, "GET", "/status", host=address)[0] == 401
            assert request(port, "GET", "/status", token=TOKEN, host=address)[0] == 200


def test_probes_without_callbacks_and_a_failing_probe():
    with serving() as port:
        assert request(port, "GET", "/healthz")[:2] == (200, {"status": "ok"})
        assert request(port, "GET", "/readyz/")[:2] == (200, {"status": "ok"})

    def broken() -> tuple[bool, dict]:
        raise RuntimeError("probe internals")

    with serving(health=broken) as port:
        assert request(port, "GET", "/healthz")[:2] == (503, {"status": "error"})


def test_query_answers_and_refusals_are_json():
    with serving() as port:
        code, body, _ = request(port, "POST", "/query", "SELECT 'é'")
        assert code == 200
        assert body == {"columns": ["sql", "at", "amount", "raw"], "rows": [["SELECT 'é'", "2024-05-01T12:00:00+00:00", 1.5, "ab"]]}
        assert request(port, "POST", "/query", "refuse me")[:2] == (400, {"error": "refused: a reason for the user"})
        code, body, _ = request(port, "POST", "/query", "crash me")
        assert (code, body) == (500, {"error": "internal error"})
        assert request(port, "GET", "/nowhere")[0] == 404
        assert request(port, "GET", "/query")[0] == 405
        code, body, _ = request(port, "PUT", "/query", "x")
        assert code == 501 and "error" in body
        response = raw_exchange(port, b"GET /status HTTP/1.1\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n")
        assert status_code(response) == 431 and "error" in json_body(response)  # http.server's own errors too


def test_no_query_function_is_403():
    with serving(query=None) as port:
        assert request(port, "POST", "/query", "SELECT 1")[:2] == (403, {"error": "/query is only served for the embedded engine"})


HEAD = b"POST /query HTTP/1.1\r\nHost: x\r\n"

BAD_BODIES = {
    "negative length": (HEAD + b"Content-Length: -1\r\n\r\nSELECT 1", 400),
    "no length": (HEAD + b"\r\nSELECT 1", 411),
    "not a number": (HEAD + b"Content-Length: 1e3\r\n\r\nSELECT 1", 400),
    "two lengths": (HEAD + b"Content-Length: 8\r\nContent-Length: 9\r\n\r\nSELECT 1", 400),
    "chunked": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n8\r\nSELECT 1\r\n0\r\n\r\n", 411),
    "not UTF-8": (HEAD + b"Content-Length: 4\r\n\r\n\xff\xfe\xfd\xfc", 400),
    "shorter than announced, then closed": (HEAD + b"Content-Length: 100\r\n\r\nSELECT 1", 400),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_bodies_get_an_error_and_the_server_goes_on(name: str):
    data, expected = BAD_BODIES[name]
    with serving() as port:
        if name.startswith("shorter"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)  # the client gives up sending: end of stream, not a stall
                response = read_until_closed(sock)
        else:
            response = raw_exchange(port, data)
        assert status_code(response) == expected, response[:200]
        assert "error" in json_body(response)
        assert request(port, "GET", "/status")[0] == 200


def test_a_body_over_64_kib_is_refused_unread():
    with serving() as port:
        started = time.monotonic()
        big = b"SELECT '" + b"x" * (10 << 20) + b"'"
        response = raw_exchange(port, HEAD + b"Content-Length: %d\r\n\r\n" % len(big) + big)
        assert time.monotonic() - started < 5
        assert response == b"" or status_code(response) == 413  # 413, or reset while still sending
        just_over = b"x" * (MAX_BODY_BYTES + 1)
        assert request(port, "POST", "/query", just_over)[0] == 413
        assert request(port, "GET", "/status")[0] == 200


def test_a_client_that_stalls_mid_body_is_cut_off():
    with serving(timeout_s=1.0) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(HEAD + b"Content-Length: 100\r\n\r\nSELECT 1, ")  # 10 of 100 bytes, then nothing
        assert request(port, "GET", "/status")[0] == 200  # other requests are served meanwhile
        response = read_until_closed(sock)
        assert status_code(response) == 408 and "did not arrive" in json_body(response)["error"]
        assert time.monotonic() - started < 4
        assert request(port, "GET", "/status")[0] == 200


def test_a_client_that_trickles_the_body_is_cut_off_at_the_deadline():
    with serving(timeout_s=1.0) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(HEAD + b"Content-Length: 100\r\n\r\n")
        response = b""
        for _ in range(40):  # one byte every 0.1 s: each read is quick, the whole body is not
            sock.sendall(b"x")
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                response = read_until_closed(sock)
                break
        assert status_code(response) == 408
        assert time.monotonic() - started < 3


def test_a_client_that_stalls_in_its_headers_is_disconnected():
    with serving(timeout_s=1.0) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /query HTTP/1.1\r\nContent-Le")
        assert sock.recv(65536) == b""  # closed without an answer: there is no request to answer
        assert time.monotonic() - started < 4


# ---------------------------------------------------------------------------------------------------------
# Attacks against a real chDB behind a real server (one subprocess for all of them)
# ---------------------------------------------------------------------------------------------------------

CHDB_SERVER = r"""
import json, sys
import clickhouse_connect
from sinks.clickhouse_ddl import statements
from pipeline.views.reads import ReadOnlyQueries
from pipeline.views.web import start_status_server

data_dir = sys.argv[1]
writer = clickhouse_connect.get_client(dsn=f"chdb://{data_dir}")
for ddl in statements("cem"):
    writer.command(ddl)
writer.command(
    "INSERT INTO cem.touchpoints_enriched (event_id, customer_id, occurred_at, channel, type, amount) VALUES "
    "('e1', 'c1', '2024-05-01 12:00:10', 'web', 'purchase', 10), ('e2', 'c1', '2024-05-01 12:00:20', 'web', 'purchase', 20), "
    "('e3', 'c2', '2024-05-01 12:01:00', 'web', 'view', NULL), ('e4', 'c2', '2024-05-01 12:01:00', 'sms', 'view', NULL), "
    "('e5', 'c3', '2024-05-01 12:02:00', 'sms', 'view', NULL)")
writer.command("INSERT INTO cem.alerts (alert_id, type, customer_id, channel, emitted_at) VALUES "
               "('a1', 'churn_risk', 'c1', 'web', '2024-05-01 12:05:00'), ('a2', 'complaint', 'c2', 'sms', '2024-05-01 12:06:00')")
writer.command("INSERT INTO cem.customer_state (customer_id, version) VALUES ('c1', 1), ('c2', 1), ('c2', 2)")
writer.command("INSERT INTO cem.dead_letters (reason, payload) VALUES ('undecodable', 'x')")

reader = clickhouse_connect.get_client(dsn=f"chdb://{data_dir}")
limits = json.loads(sys.argv[2])
queries = ReadOnlyQueries(reader, "cem", limits=limits)
server = start_status_server(0, lambda: {"pid": 0}, queries.run)
print(json.dumps({"port": server.server_address[1]}), flush=True)

def inventory():
    tables = [row[0] for row in writer.query("SELECT name FROM system.tables WHERE database = 'cem' ORDER BY name").result_rows]
    return {
        "databases": sorted(row[0] for row in writer.query("SELECT name FROM system.databases").result_rows),
        "rows": {t: writer.query(f"SELECT count() FROM cem.{t}").result_rows[0][0] for t in tables},
    }

def unguarded(sql):  # the read client itself, past the guard: only the engine's readonly stands in the way
    try:
        reader.command(sql)
        return {"ok": True}
    except Exception as exc:
        return {"error": str(exc)[:500]}

for line in sys.stdin:
    command, _, arg = line.rstrip("\n").partition(" ")
    reply = inventory() if command == "inventory" else unguarded(json.loads(arg))
    print(json.dumps(reply), flush=True)
"""

TEST_LIMITS = {"max_execution_time": 1, "max_memory_usage": 100 << 20, "max_result_rows": 1000,
               "max_result_bytes": 10 << 20, "result_overflow_mode": "throw"}


class ChdbWorker:
    """The subprocess: its server's port, and a side channel on stdin/stdout that bypasses the server."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port

    def ask(self, command: str, arg: Any = None) -> dict:
        line = command if arg is None else f"{command} {json.dumps(arg)}"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(_read_line(self.proc, 30))

    def inventory(self) -> dict:
        return self.ask("inventory")

    def query(self, sql: str) -> tuple[int, dict]:
        code, body, _ = request(self.port, "POST", "/query", sql)
        return code, body


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    readable, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if readable else ""
    if not line:
        proc.kill()
        raise AssertionError(f"the chDB server process did not answer (exit {proc.poll()})")
    return line


@pytest.fixture(scope="module")
def chdb_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbWorker]:
    pytest.importorskip("chdb")
    data_dir = tmp_path_factory.mktemp("chdb")
    stderr = (data_dir.parent / "chdb-server.stderr").open("w+")
    proc = subprocess.Popen([sys.executable, "-c", CHDB_SERVER, str(data_dir / "engine"), json.dumps(TEST_LIMITS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT)
    try:
        line = _read_line(proc, 60)
    except AssertionError:
        stderr.seek(0)
        raise AssertionError(stderr.read()[-3000:]) from None
    worker = ChdbWorker(proc, json.loads(line)["port"])
    yield worker
    proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    stderr.close()


@pytest.fixture(scope="module")
def baseline(chdb_worker: ChdbWorker) -> dict:
    inventory = chdb_worker.inventory()
    assert inventory["rows"]["touchpoints_enriched"] == 5 and inventory["rows"]["alerts"] == 2
    assert {"kpi_minute", "dead_letters", "customer_state"} <= set(inventory["rows"])
    return inventory


ATTACKS = {  # the security review's, each with (part of) the reason the answer must give
    "DROP VIEW cem.kpi_minute": "only SELECT",
    "TRUNCATE cem.dead_letters": "only SELECT",
    "TRUNCATE TABLE cem.touchpoints_enriched": "only SELECT",
    "CREATE TABLE cem.x (a Int8) ENGINE = Memory": "only SELECT",
    "CREATE DATABASE evil": "only SELECT",
    "DROP TABLE cem.alerts": "only SELECT",
    "ALTER TABLE cem.alerts DELETE WHERE 1": "only SELECT",
    "DELETE FROM cem.alerts WHERE 1": "only SELECT",
    "RENAME TABLE cem.alerts TO cem.gone": "only SELECT",
    "INSERT INTO cem.alerts (alert_id) VALUES ('x')": "only SELECT",
    "INSERT INTO cem.alerts (alert_id) SELECT 'x'": "only SELECT",
    "OPTIMIZE TABLE cem.alerts FINAL": "only SELECT",
    "SYSTEM DROP MARK CACHE": "only SELECT",
    "SELECT * FROM file('/etc/passwd')": "table functions",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')": "table functions",
    "SELECT file('/etc/passwd')": "file() is refused",
    "SELECT `file`('/etc/hostname')": "file() is refused",
    "SELECT * FROM url('http://127.0.0.1:1/')": "table functions",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')": "table functions",
    "SELECT * FROM cem.alerts AS a JOIN numbers(10) AS n ON 1": "table functions",
    "SELECT * FROM remote('127.0.0.1', system.one)": "table functions",
    "SELECT * FROM system.users": "only cem's tables",
    "SELECT name FROM system.tables": "only cem's tables",
    "SELECT * FROM information_schema.tables": "only cem's tables",
    "SELECT count() FROM cem.alerts WHERE alert_id IN system.tables": "system database",
    "SELECT * FROM (SELECT * FROM system.one) AS x": "only cem's tables",
    "WITH x AS (SELECT * FROM system.users) SELECT * FROM x": "only cem's tables",
    "SELECT hostName()": "hostName() is refused",
    "SELECT dictGet('cem.d', 'x', 1)": "dictGet() is refused",
    "SELECT 1 SETTINGS readonly = 0": "readonly",
    "SELECT 1 SETTINGS max_result_rows = 1000": "SETTINGS clauses are refused",
    "SELECT 1; DROP TABLE cem.alerts": "as one statement",
    "SELECT 1;\nTRUNCATE cem.dead_letters;": "as one statement",
    "SET max_memory_usage = 1": "only SELECT",
    "SET readonly = 0": "only SELECT",
    "SELECT 1 FORMAT JSON": "FORMAT",
    "EXISTS TABLE cem.alerts": "only SELECT",
    "SHOW TABLES FROM system": "only SELECT",
    "USE system": "only SELECT",
    "SELECT 1 AS `x\n    Function file`": "plain function names",
    "": "no SQL given",
}


@pytest.mark.integration
@pytest.mark.parametrize("sql", list(ATTACKS))
def test_attack_is_refused_and_nothing_changes(chdb_worker: ChdbWorker, baseline: dict, sql: str):
    code, body = chdb_worker.query(sql)
    assert code == 400, body
    assert ATTACKS[sql] in body["error"]
    assert chdb_worker.inventory() == baseline


@pytest.mark.integration
def test_no_file_is_written(chdb_worker: ChdbWorker, baseline: dict, tmp_path: Path):
    through_function, outfile = tmp_path / "function.csv", tmp_path / "outfile.csv"
    assert chdb_worker.query(f"INSERT INTO FUNCTION file('{through_function}', 'CSV') SELECT 1")[0] == 400
    code, body = chdb_worker.query(f"SELECT count() FROM cem.alerts INTO OUTFILE '{outfile}'")
    assert code == 400 and "INTO OUTFILE" in body["error"]
    assert not through_function.exists() and not outfile.exists()
    assert chdb_worker.inventory() == baseline


@pytest.mark.integration
@pytest.mark.parametrize("sql", [
    "DROP TABLE cem.alerts", "TRUNCATE cem.dead_letters", "DROP VIEW cem.kpi_minute",
    "CREATE TABLE cem.x (a Int8) ENGINE = Memory", "INSERT INTO cem.alerts (alert_id) VALUES ('x')",
    "SET readonly = 0", "SET max_execution_time = 1000",
])
def test_the_engine_refuses_writes_even_past_the_guard(chdb_worker: ChdbWorker, baseline: dict, sql: str):
    reply = chdb_worker.ask("unguarded", sql)
    assert "readonly" in reply.get("error", ""), reply
    assert chdb_worker.inventory() == baseline


@pytest.mark.integration
@pytest.mark.parametrize("sql", [
    "SELECT arrayJoin(range(5000)) AS n",  # no FROM: ClickHouse skips the result limits unless wrapped
    "SELECT n FROM cem.alerts ARRAY JOIN range(5000) AS n",
])
def test_answers_over_the_row_limit_are_refused(chdb_worker: ChdbWorker, sql: str):
    code, body = chdb_worker.query(sql)
    assert code == 400 and "Limit for result exceeded" in body["error"], body


@pytest.mark.integration
def test_slow_and_greedy_queries_are_stopped(chdb_worker: ChdbWorker):
    started = time.monotonic()
    code, body = chdb_worker.query("SELECT sleep(3) FROM cem.alerts")
    assert code == 400 and "Timeout exceeded" in body["error"], body
    assert time.monotonic() - started < 2.5
    code, body = chdb_worker.query("SELECT length(groupArray(n)) FROM (SELECT arrayJoin(range(30000000)) AS n)")
    assert code == 400 and "memory limit" in body["error"].lower(), body


LEGIT_READS = {
    "SELECT channel, sum(events) AS events FROM cem.kpi_minute GROUP BY channel ORDER BY channel":
        [["sms", 2], ["web", 3]],
    "SELECT toFloat64(sum(revenue)) FROM kpi_minute WHERE channel = 'web'": [[30.0]],
    "WITH per_minute AS (SELECT minute, sum(events) AS e FROM cem.kpi_minute GROUP BY minute) "
    "SELECT count(), sum(e) FROM per_minute": [[3, 5]],
    "SELECT a.alert_id, c.version FROM cem.alerts AS a INNER JOIN cem.customer_state AS c FINAL "
    "ON a.customer_id = c.customer_id ORDER BY a.alert_id": [["a1", 1], ["a2", 2]],
    "SELECT count() FROM cem.customer_state FINAL": [[2]],
    "SELECT * FROM (SELECT 'alerts' AS t, count() FROM cem.alerts UNION ALL SELECT 'dead', count() FROM cem.dead_letters) "
    "ORDER BY t": [["alerts", 2], ["dead", 1]],
    "SELECT customer_id FROM cem.alerts WHERE customer_id IN (SELECT customer_id FROM cem.touchpoints_enriched "
    "WHERE type = 'purchase') ORDER BY 1": [["c1"]],
    "SELECT channel, count() OVER (PARTITION BY channel) AS n FROM cem.touchpoints_enriched ORDER BY channel LIMIT 1":
        [["sms", 2]],
    "SELECT arrayJoin(['a', 'b']) AS x, 'q''uote;' AS y ORDER BY x": [["a", "q'uote;"], ["b", "q'uote;"]],
    "SELECT 1;": [[1]],
}


@pytest.mark.integration
@pytest.mark.parametrize("sql", list(LEGIT_READS))
def test_reads_of_cem_tables_work(chdb_worker: ChdbWorker, sql: str):
    code, body = chdb_worker.query(sql)
    assert code == 200, body
    assert body["rows"] == LEGIT_READS[sql]


@pytest.mark.integration
def test_cem_top_and_dashboard_sql_pass_the_guard(chdb_worker: ChdbWorker):
    code, body = chdb_worker.query(top.kpi_sql("cem"))
    assert code == 200 and {row[0] for row in body["rows"]} == {"sms", "web"}, body
    code, body = chdb_worker.query(top.alerts_sql("cem"))
    assert code == 200 and body["rows"][0][3] == "c2", body
    deploy = pytest.importorskip("test_deploy")
    refused = []
    for kind, expr in deploy.grafana_queries():
        if kind == "sql":
            code, body = chdb_worker.query(deploy.substitute_macros(expr))
            if code != 200:
                refused.append(f"{body['error'][:300]}\n  {expr}")
    assert not refused, "\n\n".join(refused)

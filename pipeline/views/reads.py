"""The read side of cem: SQL that can only read cem's own tables (``cem query``, ``/query``, ``cem top``).

Read-only by construction, in three layers; the first alone already stops every write to a table:

1. **The engine.** :class:`ReadOnlyQueries` puts its client's session in ``readonly = 1`` after
   setting :data:`READ_LIMITS`: from then on ClickHouse refuses any write, DDL, ``SET`` or
   ``SETTINGS`` change on that session, whatever SQL reaches it (verified on chDB: INSERT, INSERT
   INTO FUNCTION, CREATE, DROP, TRUNCATE, ``SET readonly = 0``, ``SETTINGS readonly = 0``).
2. **One statement.** chDB runs every statement of a multi-statement string (``EXPLAIN AST SELECT 1;
   DROP TABLE t`` drops the table), so the SQL never becomes query text before the engine has parsed
   it: it is bound as a parameter of ``formatQuery``, which refuses multiple statements and returns
   the statement in ClickHouse's canonical form. That text, and only that text, is explained and run.
3. **The tree.** ``EXPLAIN AST`` of the canonical statement (it only parses) is walked by
   :func:`check_read_only`: one ``SelectWithUnionQuery``, known node kinds only, no ``SETTINGS``,
   ``FORMAT`` or ``INTO OUTFILE``, tables only from cem's own, no table functions, no function that
   reads files, the network, the host, dictionaries or the server's configuration.

Why layer 3 on top of ``readonly``: ``readonly = 1`` does not stop reads that reach outside cem.
On chDB under ``readonly = 1`` the scalar ``file('/etc/hostname')`` still reads the file, ``INTO
OUTFILE`` still writes one, and ``system.*`` and other databases stay readable. The function deny
list is safe because it only has to cover *reads* (every write is the engine's to refuse) and it is
built from the engine itself where it can be: every table-function name (``system.table_functions``,
chDB's scalar ``file`` is one), every function in the AI, Dictionary, Embedded Dictionary,
Introspection and Internal categories and every alias of a denied name (``system.functions``), plus
the host and configuration readers named in :data:`DENIED_FUNCTIONS`.

Names: ``cem.<table>`` must name one of ``tables`` (default: what ``sinks.clickhouse_ddl`` creates).
An unqualified name is looked up by the engine in cem's database, which :class:`ReadOnlyQueries`
makes the session's current one, so it is a CTE (``WITH x AS (...)``, whose body is checked like any
subquery) or a table of that database; ``EXPLAIN AST`` does not print CTE names, so the two cannot be
told apart here. ``system.*``, ``information_schema`` and every other database are refused, in ``FROM``
and in ``x IN db.table`` alike.

``EXPLAIN AST`` prints names and aliases verbatim, so a backquoted name with a line break can add
made-up rows to the tree. Every check is therefore a check of each row on its own (an added row can
only add a refusal), except the root, which is the first row and printed before any name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from typing import Any, NamedTuple

from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.clickhouse_ddl import statements


class QueryRefused(ValueError):
    """The SQL is not a read of cem's tables; the message says why (shown to the user)."""


# ClickHouse settings of every read (the session's, set before readonly). "throw", not "break": a
# KPI sum cut at the row limit would be a wrong answer that looks right. No max_rows_to_read: KPI
# reads legitimately scan the whole enriched table; time and memory bound them instead.
READ_LIMITS: dict[str, int | str] = {
    "max_execution_time": 10,  # seconds
    "max_memory_usage": 1 << 30,  # 1 GiB per query
    "max_result_rows": 100_000,
    "max_result_bytes": 256 << 20,
    "result_overflow_mode": "throw",
    "readonly": 1,  # last: after it nothing on the session can change a setting
}

# The table functions of chDB 4.4 (ClickHouse 26.9), `SELECT name FROM system.table_functions`; the
# engine's own list is added at run time. Each is refused in FROM and, by name, as a scalar function.
TABLE_FUNCTIONS = frozenset((
    "SQLStandardValues", "arrowstream", "azureBlobStorage", "azureBlobStorageCluster", "bigquery", "cluster",
    "clusterAllReplicas", "cosn", "deltaLake", "deltaLakeAzure", "deltaLakeAzureCluster", "deltaLakeCluster",
    "deltaLakeLocal", "deltaLakeS3", "deltaLakeS3Cluster", "dictionary", "eval", "executable", "file",
    "fileCluster", "filesystem", "format", "fuzzJSON", "fuzzQuery", "gcs", "generateRandom", "generateSeries",
    "generate_series", "hdfs", "hdfsCluster", "hudi", "hudiCluster", "iceberg", "icebergAzure",
    "icebergAzureCluster", "icebergCluster", "icebergHDFS", "icebergHDFSCluster", "icebergLocal",
    "icebergLocalCluster", "icebergS3", "icebergS3Cluster", "input", "jdbc", "loop", "merge",
    "mergeTreeAnalyzeIndexes", "mergeTreeAnalyzeIndexesUUID", "mergeTreeCodecBlockCounts", "mergeTreeIndex",
    "mergeTreeProjection", "mergeTreeTextIndex", "mongodb", "mysql", "null", "numbers", "numbers_mt", "odbc", "oss",
    "paimon", "paimonAzure", "paimonAzureCluster", "paimonCluster", "paimonHDFS", "paimonHDFSCluster",
    "paimonLocal", "paimonS3", "paimonS3Cluster", "postgresql", "primes", "prometheusQuery", "prometheusQueryRange",
    "python", "redis", "remote", "remoteSecure", "s3", "s3Cluster", "sqlite", "timeSeriesData",
    "timeSeriesMetricFamilies", "timeSeriesMetrics", "timeSeriesSamples", "timeSeriesSelector", "timeSeriesTags",
    "url", "urlCluster", "values", "view", "viewExplain", "viewIfPermitted", "ytsaurus", "zeros", "zeros_mt",
))

# Functions that read files, the network, the host or the server's configuration, or have side
# effects outside the query (sleep is allowed: max_execution_time bounds it).
_READERS = (
    "file", "showCertificate", "catboostEvaluate", "modelEvaluate", "naiveBayesClassifier",
    "naiveBayesClassifierWithProb", "naiveBayesClassifierWithAllProbs", "joinGet", "joinGetOrNull",
    "hasColumnInTable", "getMaxTableNameLengthForDatabase", "hostName", "hostname", "FQDN", "fullHostName",
    "displayName", "getOSKernelVersion", "filesystemAvailable", "filesystemCapacity", "filesystemUnreserved",
    "getMacro", "getServerPort", "tcpPort", "getServerSetting", "getMergeTreeSetting", "getSetting",
    "getSettingOrDefault", "getClientHTTPHeader", "currentRequestURL", "addressToLine", "addressToLineWithInlines",
    "addressToSymbol", "demangle", "logTrace", "tid", "generateSerialID", "aiClassify", "aiEmbed", "aiExtract",
    "aiFilter", "aiGenerate", "aiRedact", "aiSimilarity", "aiTranslate",
)
DENIED_FUNCTIONS = frozenset(name.lower() for name in (*_READERS, *TABLE_FUNCTIONS))
# Whole families: dictionaries (dictGet*, dictHas, dictIsIn...), the embedded geo dictionaries
# (regionToName...) and ClickHouse's internal functions (__getScalar...).
DENIED_PREFIXES = ("dict", "region", "__")
DENIED_CATEGORIES = frozenset({"AI", "Dictionary", "Embedded Dictionary", "Introspection", "Internal"})

KNOWN_DATABASES = frozenset({"system", "information_schema", "INFORMATION_SCHEMA", "default"})

# Every node kind a SELECT prints in EXPLAIN AST; anything else (Set, InsertQuery, QueryParameter,
# a kind a newer engine adds) is refused.
AST_KINDS = frozenset((
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList", "Identifier", "Function",
    "Literal", "Asterisk", "QualifiedAsterisk", "ColumnsRegexpMatcher", "ColumnsListMatcher",
    "QualifiedColumnsRegexpMatcher", "QualifiedColumnsListMatcher", "ColumnsTransformerList",
    "ColumnsApplyTransformer", "ColumnsExceptTransformer", "ColumnsReplaceTransformer",
    "ColumnsReplaceTransformer::Replacement", "TablesInSelectQuery", "TablesInSelectQueryElement",
    "TableExpression", "TableIdentifier", "TableJoin", "ArrayJoin", "SampleRatio", "Subquery", "WithElement",
    "OrderByElement", "InterpolateElement", "WindowDefinition", "WindowListElement",
))

_NAMED_KINDS = ("Function", "TableIdentifier", "Identifier")
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_TSV_ESCAPES = {"\\": "\\", "'": "'", "t": "\t", "n": "\n", "r": "\r", "0": "\0", "b": "\b", "f": "\f"}


class AstRow(NamedTuple):
    """One row of ``EXPLAIN AST``: its depth (indentation), node kind, name and what follows it."""

    depth: int
    kind: str
    name: str = ""
    tail: str = ""


def cem_tables(database: str = "cem") -> frozenset[str]:
    """The tables and views ``sinks.clickhouse_ddl`` creates in ``database``.

    >>> {"touchpoints_enriched", "kpi_minute", "dead_letters", "alerts"} <= cem_tables()
    True
    """
    prefix = f"{database}."
    found = (re.match(r"CREATE (?:TABLE|VIEW) IF NOT EXISTS (\S+?)[\s(]", sql) for sql in statements(database))
    return frozenset(m[1].removeprefix(prefix) for m in found if m and m[1].startswith(prefix))


def parse_ast(text: str) -> list[AstRow]:
    r"""The rows of ``EXPLAIN AST`` output in TabSeparated (one row a line, quotes and backslashes escaped).

    >>> for row in parse_ast("SelectWithUnionQuery (children 1)\n Function file (alias f) (children 1)\n  Literal \\'/a\\'"):
    ...     print(row)
    AstRow(depth=0, kind='SelectWithUnionQuery', name='', tail='(children 1)')
    AstRow(depth=1, kind='Function', name='file', tail='(alias f) (children 1)')
    AstRow(depth=2, kind='Literal', name='', tail="'/a'")
    """
    return [_row(_unescape_tsv(line)) for line in text.split("\n") if line.strip()]


def _row(line: str) -> AstRow:
    body = line.lstrip(" ")
    kind, _, rest = body.partition(" ")
    rest = rest.lstrip(" ")  # InsertQuery pads its kind with spaces
    if kind in _NAMED_KINDS:
        name, _, tail = rest.partition(" ")
        return AstRow(len(line) - len(body), kind, name, tail)
    return AstRow(len(line) - len(body), kind, "", rest)


def _unescape_tsv(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _TSV_ESCAPES.get(m[1], m[0]), value)


def check_read_only(
    sql: str,
    explain_ast: Callable[[str], str],
    database: str = "cem",
    tables: Collection[str] | None = None,
    *,
    denied_functions: Collection[str] = DENIED_FUNCTIONS,
    databases: Collection[str] = KNOWN_DATABASES,
) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` only reads ``database``'s ``tables``.

    ``explain_ast(sql)`` returns ClickHouse's ``EXPLAIN AST`` of ``sql`` as TabSeparated text; it must
    only parse, and must not run a second statement (:class:`ReadOnlyQueries` explains the engine's
    canonical single statement). ``denied_functions`` are lower-case names; ``databases`` are the
    engine's databases (a dotted name starting with one is a table reference).

    >>> ast = "SelectWithUnionQuery (children 1)\\n ExpressionList (children 1)\\n  SelectQuery (children 1)\\n"
    >>> ast += "   ExpressionList (children 1)\\n    Function file (children 1)\\n"
    >>> check_read_only("SELECT file('/etc/passwd')", lambda sql: ast)
    Traceback (most recent call last):
    ...
    pipeline.views.reads.QueryRefused: file() is refused: it can read files, the network, the host or the server's configuration
    """
    rows = parse_ast(explain_ast(sql))
    allowed = cem_tables(database) if tables is None else frozenset(tables)
    _check_statement(rows)
    parents: list[str] = []
    for row in rows:
        del parents[row.depth:]
        parent = parents[-1] if parents else ""
        _check_row(row, parent, database, allowed, denied_functions, databases)
        parents.append(row.kind)


def _check_statement(rows: list[AstRow]) -> None:
    """One SELECT, without clauses about its output (FORMAT, INTO OUTFILE, SETTINGS)."""
    if not rows:
        raise QueryRefused("no statement")
    if rows[0].depth != 0 or rows[0].kind != "SelectWithUnionQuery":
        raise QueryRefused(f"only SELECT queries are served, not {rows[0].kind}")
    if any(row.depth == 0 for row in rows[1:]):
        raise QueryRefused("one statement only")
    clauses = [row for row in rows if row.depth == 1]
    extra = clauses[1:] if clauses and clauses[0].kind == "ExpressionList" else clauses
    if extra:
        raise QueryRefused(_clause_refusal(extra[0].kind))


def _clause_refusal(kind: str) -> str:
    return {
        "Literal": "INTO OUTFILE is refused: the answer goes to the caller only",
        "Identifier": "FORMAT clauses are refused: the server chooses the answer's format",
        "Set": "SETTINGS clauses are refused: the read limits are fixed",
    }.get(kind, f"{kind} is not allowed at the top of a read query")


def _check_row(
    row: AstRow, parent: str, database: str, tables: frozenset[str], denied: Collection[str], databases: Collection[str]
) -> None:
    if row.kind not in AST_KINDS:
        raise QueryRefused(_clause_refusal("Set") if row.kind == "Set" else f"{row.kind} is not allowed in a read query")
    if row.kind not in _NAMED_KINDS:
        return
    if row.tail and not row.tail.startswith(("(alias ", "(children ")):
        raise QueryRefused(f"{row.name} {row.tail.split(' (')[0]}: names with spaces or line breaks are refused")
    if row.kind == "Function":
        _check_function(row.name, parent, denied)
    elif row.kind == "TableIdentifier":
        _check_table(row.name, database, tables)
    else:
        _check_identifier(row.name, database, tables, databases)


def _check_function(name: str, parent: str, denied: Collection[str]) -> None:
    if parent == "TableExpression":
        raise QueryRefused(f"table functions are refused ({name}): FROM must name a cem table")
    if not _PLAIN_NAME.fullmatch(name) or "." in name:
        raise QueryRefused(f"function {name!r} is refused: plain function names only")
    if name.lower() in denied or name.lower().startswith(DENIED_PREFIXES):
        raise QueryRefused(f"{name}() is refused: it can read files, the network, the host or the server's configuration")


def _check_table(name: str, database: str, tables: frozenset[str]) -> None:
    parts = name.split(".")
    if not _PLAIN_NAME.fullmatch(name) or len(parts) > 2:
        raise QueryRefused(f"table {name!r} is refused: plain names only")
    if len(parts) == 2 and (parts[0] != database or parts[1] not in tables):
        raise QueryRefused(f"{name} is refused: only {database}'s tables can be read ({', '.join(sorted(tables))})")


def _check_identifier(name: str, database: str, tables: frozenset[str], databases: Collection[str]) -> None:
    """A dotted name that starts with a database is a table (``x IN system.users``): cem's only."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix == database and parts[i] not in tables:
            raise QueryRefused(f"{prefix}.{parts[i]} is refused: only {database}'s tables can be read")
        if prefix != database and prefix in databases:
            raise QueryRefused(f"{name} is refused: the {prefix} database cannot be read, only {database}")


class ReadOnlyQueries:
    """The read side for ``cem query``, ``/query``, ``cem top`` (and later the 360° customer view).

    ``client`` is a clickhouse-connect client (``chdb://`` or http) of its own: its session is made
    read-only for good (:data:`READ_LIMITS`, then ``readonly = 1``) and its current database is set
    to ``database``. Never pass a client that also writes (the sink's).
    """

    def __init__(self, client: Any, database: str = "cem", *, tables: Collection[str] | None = None,
                 limits: dict[str, int | str] = READ_LIMITS) -> None:
        self.database = database
        self.tables = cem_tables(database) if tables is None else frozenset(tables)
        self._client = client
        self.denied_functions = DENIED_FUNCTIONS | _engine_denials(client)  # before the limits: 1,900 rows
        for key, value in limits.items():
            if key != "readonly":
                client.set_client_setting(key, value)
        client.set_client_setting("readonly", 1)  # last: settings cannot change after it
        client.database = database  # unqualified names resolve in cem's database

    def run(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Check ``sql``, then run the engine's canonical form of it: (column names, rows)."""
        statement = self.statement(sql)
        check_read_only(statement, self._explain_ast, self.database, self.tables,
                        denied_functions=self.denied_functions, databases=self._databases())
        # Read through `SELECT * FROM (...)`: ClickHouse enforces the result limits on a query that
        # reads a table but not on an outer SELECT without FROM (its implicit system.one), where
        # `SELECT arrayJoin(range(100000000))` returned 1e8 rows into the worker. (WITH TOTALS is lost.)
        result = self._client.query(f"SELECT * FROM (\n{statement}\n)")
        return list(result.column_names), list(result.result_rows)

    def statement(self, sql: str) -> str:
        """The one statement in ``sql``, as ClickHouse formats it (``sql`` bound as a parameter, never run)."""
        if not sql.strip():
            raise QueryRefused("no SQL given")
        try:
            rows = self._client.query("SELECT formatQuery({sql:String})", parameters={"sql": sql}).result_rows
        except DatabaseError as exc:
            if not getattr(exc, "code", None):
                raise  # no engine answer (unreachable server): not the caller's error
            raise QueryRefused(f"the SQL does not parse as one statement: {_engine_message(exc)}") from None
        return rows[0][0]

    def _explain_ast(self, statement: str) -> str:
        # raw_query without a format appends nothing: a FORMAT appended here would be parsed as the
        # explained statement's own clause.
        try:
            return self._client.raw_query(f"EXPLAIN AST {statement}").decode("utf-8", "replace")
        except DatabaseError as exc:  # e.g. a SETTINGS clause, applied even by EXPLAIN, under readonly
            if not getattr(exc, "code", None):
                raise
            raise QueryRefused(f"refused by the engine: {_engine_message(exc)}") from None

    def _databases(self) -> frozenset[str]:
        # Per query: a database created after start must not become readable through `x IN db.t`.
        return KNOWN_DATABASES | {row[0] for row in self._client.query("SELECT name FROM system.databases").result_rows}


def _engine_denials(client: Any) -> frozenset[str]:
    """Lower-case names the engine itself marks: table functions, risky categories, their aliases."""
    denied = {row[0].lower() for row in client.query("SELECT name FROM system.table_functions").result_rows}
    has_categories = client.query(
        "SELECT count() FROM system.columns WHERE database = 'system' AND table = 'functions' AND name = 'categories'"
    ).result_rows[0][0]
    categories = "categories" if has_categories else "''"  # older servers do not categorize functions
    rows = client.query(f"SELECT name, alias_to, {categories} FROM system.functions").result_rows
    denied |= {name.lower() for name, _, categories in rows if _categories(categories) & DENIED_CATEGORIES}
    targets = denied | DENIED_FUNCTIONS
    denied |= {name.lower() for name, alias, _ in rows if alias and alias.lower() in targets}
    return frozenset(denied)


def _categories(value: str | Iterable[str]) -> set[str]:
    return {c.strip() for c in value.split(",")} if isinstance(value, str) else set(value)


def _engine_message(exc: Exception) -> str:
    """ClickHouse's message without the wrapper query it was raised in."""
    message = str(exc).split(" In scope SELECT formatQuery(")[0]
    return message.removesuffix(":").strip()[:2000]

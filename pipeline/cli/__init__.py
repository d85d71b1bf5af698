"""The ``cem`` command: run, worker, trainer, engine, generate, publish, query, customer, bench, model, alerts, top."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    honour_interrupts()
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"cem: error: {exc}", file=sys.stderr)
        return 2


def honour_interrupts() -> None:
    """Make Ctrl-C (SIGINT) stop a command even if it was started with SIGINT ignored.

    A background job of a non-interactive shell (a CI script, ``nohup cem run &``) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt: Ctrl-C, ``kill -INT`` and the SIGTERM
    that ``cem run`` turns into a SIGINT to drain would all do nothing.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cem", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="the embedded default: broker + workers + trainer + synthetic traffic + chDB")
    run.add_argument("--data-dir", default=None, help="where chDB keeps its data (default ./.cem)")
    run.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    run.add_argument("--rate", type=float, default=200.0, help="synthetic touchpoints per second (0 = none)")
    run.add_argument("--customers", type=int, default=2000)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--broker-port", type=int, default=9092)
    run.add_argument("--partitions", type=int, default=None)
    run.add_argument("--workers", type=int, default=None,
                     help="worker processes (default: one per core, at most one per partition)")
    run.add_argument("--trainer", choices=("worker", "process"), default="process",
                     help="where the model trainer runs: a process of its own (default) or inside a worker")
    run.set_defaults(handler=_run)

    worker = sub.add_parser("worker", help="the Faust worker (production), configured by CEM_* variables")
    worker.set_defaults(handler=_worker)

    trainer = sub.add_parser("trainer", help="the model trainer in a process of its own (with CEM_TRAINER=process)")
    trainer.set_defaults(handler=_trainer)

    engine = sub.add_parser("engine", help="the embedded ClickHouse engine, shared by the workers of one machine")
    engine.add_argument("--socket", required=True, help="the Unix socket to serve (its key is written beside it)")
    engine.set_defaults(handler=_engine)

    migrate = sub.add_parser("migrate", help="create or check cem's ClickHouse tables (a deployment's one-shot step)")
    migrate.add_argument("--wait", type=float, default=60.0, help="seconds to keep trying to reach ClickHouse")
    migrate.set_defaults(handler=_migrate)

    gen = sub.add_parser("generate", help="synthetic multi-channel journeys, to Kafka or to a JSONL file")
    gen.add_argument("--events", type=int, default=10_000)
    gen.add_argument("--customers", type=int, default=1000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--output", help="JSONL file (ground truth is written beside it as FILE.truth.json)")
    gen.add_argument("--bootstrap", help="publish to this Kafka instead of a file")
    gen.add_argument("--rate", type=float, default=0.0, help="events per second when publishing (0 = as fast as possible)")
    gen.add_argument("--format", choices=("avro", "confluent", "json"), default="avro")
    gen.set_defaults(handler=_generate)

    pub = sub.add_parser("publish", help="check and publish a JSONL file of touchpoints (for channel systems)")
    pub.add_argument("file", type=Path)
    pub.add_argument("--bootstrap", default=None, help="HOST:PORT (default CEM_KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    pub.add_argument("--format", choices=("avro", "confluent", "json"), default="avro")
    pub.add_argument("--skip-bad", action="store_true", help="publish the good lines even if some are bad")
    pub.set_defaults(handler=_publish)

    erase = sub.add_parser("erase", help="erase customers: state, stored touchpoints, alerts, dead letters (GDPR)")
    erase.add_argument("customer_ids", nargs="+", metavar="CUSTOMER_ID")
    erase.add_argument("--requested-by", default=None, help="who asks (the audit record); default: the OS user")
    erase.add_argument("--reason", default="", help="why, for the audit record (e.g. a ticket number)")
    erase.add_argument("--bootstrap", default=None)
    erase.set_defaults(handler=_erase)

    query = sub.add_parser("query", help="run SQL against ClickHouse (embedded chDB or a server)")
    query.add_argument("sql")
    query.add_argument("--data-dir", default=None)
    query.add_argument("--clickhouse-url", default=None)
    query.add_argument("--format", choices=("table", "json"), default="table")
    query.set_defaults(handler=_query)

    customer = sub.add_parser("customer", help="the 360-degree view of one customer, from ClickHouse")
    customer.add_argument("customer_id", help="as channel systems send it (pseudonymised here if configured)")
    customer.add_argument("--data-dir", default=None)
    customer.add_argument("--clickhouse-url", default=None)
    customer.add_argument("--format", choices=("table", "json"), default="table")
    customer.set_defaults(handler=_customer)

    bench = sub.add_parser("bench", help="end-to-end throughput and latency on the embedded stack")
    bench.add_argument("--events", type=int, default=100_000)
    bench.add_argument("--customers", type=int, default=10_000)
    bench.add_argument("--partitions", type=int, default=4)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--data-dir", default=None, help="default: a fresh temporary directory")
    bench.add_argument("--workers", type=int, default=1,
                       help="worker processes; more than one share the engine through `cem engine`")
    bench.add_argument("--trainer", choices=("worker", "process"), default="process",
                       help="where the model trainer runs: `cem trainer`, as cem run and the deployments run it "
                            "(default), or in the worker holding its topic")
    bench.set_defaults(handler=_bench)

    from pipeline.cli.alerts import add_alerts_parser
    from pipeline.cli.model import add_model_parser
    from pipeline.views.top import add_top_parser

    add_model_parser(sub)
    add_alerts_parser(sub)
    add_top_parser(sub)
    return parser


def _settings(**overrides: Any) -> Settings:
    return Settings.from_env().replace(**overrides)


def _kafka_options(settings: Settings) -> dict[str, Any]:
    """The aiokafka security options of the CEM_KAFKA_* settings; a bad one is a one-line error."""
    from pipeline.app.kafka_security import SecuritySettingsError, client_options

    try:
        return client_options(settings)
    except SecuritySettingsError as exc:
        raise CliError(str(exc)) from None


# -- handlers -----------------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> int:
    from pipeline.app.main import run_worker

    run_worker(_settings())
    return 0


def _trainer(args: argparse.Namespace) -> int:
    from pipeline.app.main import run_trainer

    run_trainer(_settings())
    return 0


def _engine(args: argparse.Namespace) -> int:
    """Open the chDB directory of ``CEM_CLICKHOUSE_URL``, create the schema, serve it until killed."""
    from sinks.clickhouse import ClickHouseSink, SchemaMismatch, connect
    from sinks.engine import EngineServer

    settings = _settings()
    if not settings.embedded_clickhouse:
        raise CliError(f"cem engine serves an embedded chdb:// engine, not {settings.clickhouse_url}")
    connection = connect(settings.clickhouse_url)
    try:
        ClickHouseSink(connection, settings.clickhouse_database).create_schema()
    except SchemaMismatch as exc:
        raise CliError(str(exc)) from None
    from pipeline.views.reads import ReadOnlyQueries

    reads = ReadOnlyQueries(connection.sibling(), settings.clickhouse_database)
    server = EngineServer(connection, Path(args.socket).resolve(), read=reads.run)
    server.start()
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import time

    from sinks.clickhouse import ClickHouseSink, SchemaMismatch, connect

    settings = _settings()
    deadline = time.monotonic() + args.wait
    while True:
        try:
            connection = connect(settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password)
            ClickHouseSink(connection, settings.clickhouse_database).create_schema()
            break
        except SchemaMismatch as exc:
            raise CliError(str(exc)) from None
        except Exception as exc:  # not reachable yet (a server still starting): try again until --wait
            if time.monotonic() > deadline:
                raise CliError(f"cannot migrate {settings.clickhouse_url}: {exc}") from None
            time.sleep(1.0)
    print(json.dumps({"migrated": settings.clickhouse_database, "clickhouse": settings.clickhouse_url}))
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline.runtime.run import run_embedded

    settings = _settings(data_dir=args.data_dir, partitions=args.partitions, trainer=args.trainer)
    workers = args.workers or min(os.cpu_count() or 1, settings.partitions)
    if not 1 <= workers <= settings.partitions:
        raise CliError(f"--workers must be from 1 to the partitions ({settings.partitions})")
    summary = run_embedded(settings, args.duration, args.rate, args.customers, args.seed, args.broker_port, workers)
    print(json.dumps(summary))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from processors.synthetic import JourneyGenerator

    if not args.output and not args.bootstrap:
        raise CliError("give --output FILE.jsonl or --bootstrap HOST:PORT")
    options = _kafka_options(_settings()) if args.bootstrap else {}
    generator = JourneyGenerator(customers=args.customers, seed=args.seed)
    events = list(generator.events(args.events))
    if args.output:
        path = Path(args.output)
        with path.open("w") as out:
            for event in events:
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
        truth = path.with_name(path.name + ".truth.json") if path.suffix != ".jsonl" else path.with_suffix(".truth.json")
        truth.write_text(json.dumps(generator.ground_truth(), default=str, indent=1))
        print(json.dumps({"events": len(events), "output": str(path), "ground_truth": str(truth)}))
    if args.bootstrap:
        from pipeline.runtime.run import publish_at_rate

        sent = asyncio.run(publish_at_rate(args.bootstrap, events, args.rate, args.format, client_options=options))
        print(json.dumps({"events": sent, "bootstrap": args.bootstrap, "format": args.format}))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from pipeline.cli.publish import check_file
    from pipeline.runtime.embedded import publish

    if not args.file.exists():
        raise CliError(f"{args.file}: no such file")
    good, bad = check_file(args.file)
    for line_no, reason, detail in bad:
        print(f"{args.file}:{line_no}: {reason}: {detail}", file=sys.stderr)
    if bad and not args.skip_bad:
        print(f"cem: {len(bad)} bad line(s), nothing published (use --skip-bad to publish the {len(good)} good ones)", file=sys.stderr)
        return 1
    settings = _settings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    options = _kafka_options(settings)
    try:
        sent = asyncio.run(publish(bootstrap, good, args.format, client_options=options))
    except Exception as exc:
        raise CliError(f"cannot publish to {bootstrap}: {exc}") from None
    print(json.dumps({"published": sent, "bad_lines": len(bad), "format": args.format, "bootstrap": bootstrap}))
    return 1 if bad else 0


def _erase(args: argparse.Namespace) -> int:
    import getpass

    from pipeline.runtime.embedded import publish_erasures

    settings = _settings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    requested_by = args.requested_by or getpass.getuser()
    try:
        sent = asyncio.run(publish_erasures(settings.replace(kafka_bootstrap=bootstrap), args.customer_ids,
                                            requested_by, args.reason))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:
        raise CliError(f"cannot publish to {bootstrap}: {exc}") from None
    print(json.dumps({"erasure_requests": sent, "requested_by": requested_by, "bootstrap": bootstrap}))
    return 0


def _query_settings(args: argparse.Namespace) -> Settings:
    settings = _settings(data_dir=args.data_dir, clickhouse_url=args.clickhouse_url)
    if args.clickhouse_url is None and args.data_dir is not None:
        settings = settings.replace(clickhouse_url=f"chdb://{Path(args.data_dir).resolve() / 'clickhouse'}")
    return settings


def _first_line(exc: Exception) -> str:
    """An engine's or a worker's error as one line (ClickHouse appends a stack trace)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _query(args: argparse.Namespace) -> int:
    from pipeline.views.query import render, run_query

    settings = _query_settings(args)
    try:
        columns, rows = run_query(settings, args.sql)
    except Exception as exc:
        raise CliError(_first_line(exc)) from None
    print(render(columns, rows, args.format))
    return 0


def _customer(args: argparse.Namespace) -> int:
    from pipeline.views.client import fetch_held_customer, running_worker
    from pipeline.views.customer import customer_view, render_view
    from pipeline.views.query import run_query
    from processors.pseudonym import from_settings

    settings = _query_settings(args)
    try:
        run = running_worker(settings.clickhouse_path().parent) if settings.embedded_clickhouse else None
        if run is not None:  # its workers answer for the engine, and hold the states the churn drivers come from
            view = fetch_held_customer(run, args.customer_id)
        else:
            pseudonymize = from_settings(settings.pseudonymize, settings.pseudonym_key)
            view = customer_view(lambda sql: run_query(settings, sql), args.customer_id,
                                 settings.clickhouse_database, pseudonymize)
            view["churn"] = None  # the churn drivers need the worker that holds the customer's state
    except Exception as exc:
        raise CliError(_first_line(exc)) from None
    print(json.dumps(view) if args.format == "json" else render_view(view))
    return 0 if view["found"] else 1


def _bench(args: argparse.Namespace) -> int:
    from pipeline.runtime.bench import run_bench

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    result = run_bench(args.events, args.customers, args.partitions, args.seed, args.data_dir, args.workers, args.trainer)
    print(json.dumps(result))
    return 0


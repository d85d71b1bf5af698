"""``cem alerts tail``: print the alerts on ``cem.alerts`` as they arrive; an example downstream consumer.

    cem alerts tail                                   # new alerts only, one JSON object per line
    cem alerts tail --type detractor --format text    # one readable line per alert
    cem alerts tail --from-beginning --max 100 --timeout 5

It reads every partition of the topic without a consumer group (nothing is committed, several tails
never share the work), from the end by default or from the beginning. Values are Avro single-object
encoded ``cem.Alert`` (``schemas/alert.avsc``) or JSON (the worker with ``CEM_ALERT_FORMAT=json``).
Alerts are delivered at least once and ``alert_id`` is deterministic, so repeated ids are printed once
(the last :data:`DEDUPE_CAPACITY` ids are remembered). Records that do not decode are reported on
stderr and skipped. Exit codes: 0 (``--max`` reached, ``--timeout`` expired, or Ctrl-C), 2 (broker
unreachable, topic missing).

Decoding, filtering, deduplication and formatting are small pure functions, tested on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import Any

from schemas.codec import RecordEncoder, read_json
from schemas.contract import TOPIC_ALERTS, schema_json

DEDUPE_CAPACITY = 100_000
CONNECT_TIMEOUT_MS = 10_000


def _alert_fields() -> list[dict]:
    return schema_json("alert")["fields"]


def _symbols(field: str) -> tuple[str, ...]:
    """Symbols of an enum field of ``cem.Alert``.

    >>> _symbols("severity")
    ('low', 'medium', 'high', 'critical')
    """
    for f in _alert_fields():
        if f["name"] == field:
            return tuple(f["type"]["symbols"])
    raise KeyError(field)


ALERT_TYPES: tuple[str, ...] = _symbols("type")
SEVERITIES: tuple[str, ...] = _symbols("severity")
TIME_FIELDS = ("occurred_at", "emitted_at")


# -- pure helpers -----------------------------------------------------------------------------------
def normalize(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with the fields of ``cem.Alert`` in schema order, defaults filled in.

    Avro records already are; JSON ones may omit optional fields. A missing required field is a
    ``ValueError``.

    >>> r = normalize({"type": "churn_risk", "alert_id": "a", "severity": "high", "occurred_at": 1,
    ...                "emitted_at": 2, "reason": "r", "recommended_action": "x"})
    >>> list(r)[:3], r["customer_id"], r["evidence"], r["trigger_event_ids"]
    (['alert_id', 'type', 'severity'], None, {}, [])
    >>> normalize({"alert_id": "a"})
    Traceback (most recent call last):
    ...
    ValueError: missing field 'type'
    """
    out: dict[str, Any] = {}
    for f in _alert_fields():
        name = f["name"]
        if name in record:
            out[name] = record[name]
        elif "default" in f:
            out[name] = json.loads(json.dumps(f["default"]))  # a fresh copy of {} / []
        else:
            raise ValueError(f"missing field {name!r}")
    return out


def decode_value(payload: bytes, encoder: Any = None) -> dict[str, Any]:
    """One ``cem.alerts`` value as a record: JSON when it starts with ``{``, else Avro single-object.

    ``encoder`` is a ``schemas.codec.RecordEncoder("alert")`` (made on first use when not given).
    Undecodable bytes raise ``schemas.contract.Rejected`` (a ``ValueError``).

    >>> decode_value(b'{"alert_id": "a1", "type": "detractor", "severity": "high", "occurred_at": 0,'
    ...              b' "emitted_at": 0, "reason": "r", "recommended_action": "x"}')["type"]
    'detractor'
    >>> decode_value(b"\\x00garbage")
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: unknown_schema: not single-object encoded with this schema
    """
    if payload[:1] == b"{":
        return normalize(read_json(payload))
    return normalize((encoder or RecordEncoder("alert")).decode(payload))


def matches(record: Mapping[str, Any], types: Collection[str] | None = None, severities: Collection[str] | None = None) -> bool:
    """Whether an alert passes the ``--type`` / ``--severity`` filters (empty or ``None``: any).

    >>> alert = {"type": "detractor", "severity": "high"}
    >>> matches(alert), matches(alert, ["detractor"]), matches(alert, ["churn_risk"]), matches(alert, None, ["low"])
    (True, True, False, False)
    """
    return (not types or record["type"] in types) and (not severities or record["severity"] in severities)


class Deduper:
    """Remembers the last ``capacity`` alert ids; :meth:`first` is True only for an id not seen among them.

    >>> d = Deduper(capacity=2)
    >>> [d.first(i) for i in ("a", "b", "a", "c", "a", "b")]
    [True, True, False, True, False, True]
    """

    def __init__(self, capacity: int = DEDUPE_CAPACITY):
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first(self, alert_id: str) -> bool:
        if alert_id in self._seen:
            self._seen.move_to_end(alert_id)
            return False
        self._seen[alert_id] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds.

    >>> iso_ms(1_767_225_600_000), iso_ms(1_767_225_600_123)
    ('2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.123Z')
    """
    moment = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def format_json(record: Mapping[str, Any]) -> str:
    """One JSON line: the record with ``occurred_at`` / ``emitted_at`` as ISO-8601 UTC strings.

    >>> format_json({"alert_id": "a", "occurred_at": 1_767_225_600_000, "emitted_at": 1_767_225_601_500})
    '{"alert_id": "a", "occurred_at": "2026-01-01T00:00:00.000Z", "emitted_at": "2026-01-01T00:00:01.500Z"}'
    """
    out = dict(record)
    for name in TIME_FIELDS:
        if isinstance(out.get(name), int):
            out[name] = iso_ms(out[name])
    return json.dumps(out, ensure_ascii=False)


def format_text(record: Mapping[str, Any]) -> str:
    """One readable line: ``<occurred_at> <severity> <type> <customer or channel>: <reason> -> <action>``.

    >>> format_text({"occurred_at": 1_767_225_600_000, "severity": "high", "type": "detractor",
    ...              "customer_id": "c1", "channel": "web", "reason": "NPS 2/10.", "recommended_action": "call back"})
    '2026-01-01T00:00:00.000Z high detractor c1: NPS 2/10. -> call back'
    >>> format_text({"occurred_at": 0, "severity": "medium", "type": "channel_anomaly", "customer_id": None,
    ...              "channel": "chat", "reason": "CSAT dropped.", "recommended_action": "check chat"})
    '1970-01-01T00:00:00.000Z medium channel_anomaly chat: CSAT dropped. -> check chat'
    """
    who = record.get("customer_id") or record.get("channel") or "-"
    return (
        f"{iso_ms(record['occurred_at'])} {record['severity']} {record['type']} {who}: "
        f"{record['reason']} -> {record['recommended_action']}"
    )


FORMATTERS: dict[str, Callable[[Mapping[str, Any]], str]] = {"json": format_json, "text": format_text}


# -- the consumer -----------------------------------------------------------------------------------
class TailError(Exception):
    """Printed as one line on stderr; exit code 2."""


async def tail(
    bootstrap: str,
    emit: Callable[[dict[str, Any]], None],
    *,
    types: Collection[str] | None = None,
    severities: Collection[str] | None = None,
    from_beginning: bool = False,
    max_alerts: int | None = None,
    timeout_s: float | None = None,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    stop: asyncio.Event | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """Read ``cem.alerts`` and call ``emit`` once per matching, new alert; returns how many were emitted.

    Stops after ``max_alerts`` alerts, after ``timeout_s`` seconds without emitting one, or when ``stop``
    is set. Raises :class:`TailError` when the broker cannot be reached or the topic does not exist.
    ``client_options`` are the Kafka security options (``pipeline.app.kafka_security``).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    encoder = RecordEncoder("alert")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        request_timeout_ms=CONNECT_TIMEOUT_MS, client_id="cem-alerts-tail", **(client_options or {}),
    )
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        await consumer.stop()
        raise TailError(f"cannot reach Kafka at {bootstrap} ({type(exc).__name__})") from None
    try:
        try:
            topics = await consumer.topics()
        except (KafkaError, OSError) as exc:
            raise TailError(f"cannot read topic metadata from {bootstrap} ({type(exc).__name__})") from None
        partitions = consumer.partitions_for_topic(TOPIC_ALERTS) if TOPIC_ALERTS in topics else None
        if not partitions:
            raise TailError(f"topic {TOPIC_ALERTS} does not exist on {bootstrap}")
        assigned = [TopicPartition(TOPIC_ALERTS, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the start offsets now: "new" means after this point
            await consumer.position(tp)

        dedupe = Deduper()
        emitted = 0
        last_emit = time.monotonic()
        while max_alerts is None or emitted < max_alerts:
            if stop is not None and stop.is_set():
                break
            wait_ms = 500
            if timeout_s is not None:
                left = timeout_s - (time.monotonic() - last_emit)
                if left <= 0:
                    break
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            batches = await consumer.getmany(timeout_ms=wait_ms)
            for tp, messages in sorted(batches.items(), key=lambda item: item[0].partition):
                for message in messages:
                    try:
                        record = decode_value(message.value or b"", encoder)
                    except (ValueError, TypeError) as exc:
                        warn(f"cem alerts tail: skipped {tp.topic}[{tp.partition}]@{message.offset}: {exc}")
                        continue
                    if not matches(record, types, severities) or not dedupe.first(str(record["alert_id"])):
                        continue
                    emit(record)
                    emitted += 1
                    last_emit = time.monotonic()
                    if max_alerts is not None and emitted >= max_alerts:
                        return emitted
        return emitted
    finally:
        await consumer.stop()


# -- argparse -----------------------------------------------------------------------------------------
def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return number


def add_alerts_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``alerts tail`` to a CLI's subparsers; its ``handler`` is :func:`run_alerts_tail`."""
    alerts = subparsers.add_parser("alerts", help="read the alerts on cem.alerts")
    commands = alerts.add_subparsers(dest="alerts_command", metavar="COMMAND", required=True)
    tail_parser = commands.add_parser(
        "tail", help="print alerts as they arrive (an example cem.alerts consumer)",
        description="Print the alerts on cem.alerts as they arrive, each alert_id once (an example consumer).",
    )
    tail_parser.add_argument("--type", dest="types", action="append", choices=ALERT_TYPES, metavar="T",
                             help=f"only this alert type (repeatable): {', '.join(ALERT_TYPES)}")
    tail_parser.add_argument("--severity", dest="severities", action="append", choices=SEVERITIES, metavar="S",
                             help=f"only this severity (repeatable): {', '.join(SEVERITIES)}")
    tail_parser.add_argument("--from-beginning", action="store_true",
                             help="start at the oldest retained alert (default: only new alerts)")
    tail_parser.add_argument("--max", dest="max_alerts", type=_positive_int, metavar="N", help="stop after N alerts")
    tail_parser.add_argument("--timeout", type=_positive_float, metavar="S",
                             help="stop after S seconds without a new alert (default: until Ctrl-C)")
    tail_parser.add_argument("--format", choices=tuple(FORMATTERS), default="json")
    tail_parser.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                             help="Kafka bootstrap (default CEM_KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    tail_parser.set_defaults(func=run_alerts_tail, handler=run_alerts_tail)  # pipeline.cli dispatches on handler
    return alerts


def run_alerts_tail(args: argparse.Namespace) -> int:
    from pipeline.app.kafka_security import SecuritySettingsError, client_options
    from pipeline.settings import Settings

    settings = Settings.from_env()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    try:
        options = client_options(settings)
    except SecuritySettingsError as error:
        print(f"cem alerts tail: {error}", file=sys.stderr)
        return 2
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # failures are reported once, as one line
    formatter = FORMATTERS[args.format]

    def emit(record: dict[str, Any]) -> None:
        print(formatter(record), flush=True)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform / thread
            pass
        return await tail(
            bootstrap, emit, types=args.types, severities=args.severities, from_beginning=args.from_beginning,
            max_alerts=args.max_alerts, timeout_s=args.timeout, stop=stop, client_options=options,
        )

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except TailError as error:
        print(f"cem alerts tail: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `cem alerts tail | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no "Exception ignored" when Python flushes stdout at exit
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m pipeline.cli.alerts tail ...``)."""
    parser = argparse.ArgumentParser(prog="cem")
    add_alerts_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["alerts", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

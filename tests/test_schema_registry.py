"""The Confluent Schema Registry client against an in-test registry, and interop with confluent-kafka.

``FakeRegistry`` serves the REST endpoints both sides call: confluent-kafka's ``AvroSerializer``
registers (``POST /subjects/{subject}/versions``) and cem fetches (``GET /schemas/ids/{id}``). Time
is fake: the client's ``sleep`` records the backoff and advances the ``clock``, so nothing waits.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline.app.registry import SchemaRegistryClient, parse_endpoints
from schemas.codec import AvroCodec, SchemaRegistry, confluent_schema_id
from schemas.contract import TOPIC_TOUCHPOINTS, Reason, Rejected, schema_json

SUBJECT = f"{TOPIC_TOUCHPOINTS}-value"  # confluent-kafka's default TopicNameStrategy
TOUCHPOINT = {
    "event_id": "e-1", "customer_id": "c-1", "occurred_at": 1767225600123, "channel": "chat",
    "type": "feedback", "session_id": "s-9", "case_id": None, "text": "slow delivery", "csat": 2,
    "nps": None, "ces": 5, "amount": 12.5, "currency": "EUR", "journey_stage": None,
    "attributes": {"store": "berlin"}, "anonymous_id": None, "email": None, "phone": None,
}


class FakeRegistry:
    """A Schema Registry on 127.0.0.1 that can require basic auth, fail, stop and restart."""

    def __init__(self) -> None:
        self.schemas: dict[int, dict] = {}  # id -> GET /schemas/ids/{id} body
        self.subjects: dict[str, list[int]] = {}  # subject -> ids of its versions 1, 2, ...
        self.requests: list[str] = []  # "GET /schemas/ids/1", queries stripped
        self.credentials: tuple[str, str] | None = None
        self.outage: list[int] = []  # statuses of the next requests to fail
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeRegistry:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._server.registry = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]  # the same port again after a restart
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()  # quick shutdown
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def add(self, schema: str, schema_type: str = "AVRO", subject: str | None = None) -> int:
        """The id of a schema, registering it if new (the same schema always gets the same id)."""
        body = {"schema": schema} if schema_type == "AVRO" else {"schema": schema, "schemaType": schema_type}
        schema_id = next((i for i, b in self.schemas.items() if b == body), len(self.schemas) + 1)
        self.schemas[schema_id] = body
        if subject is not None and schema_id not in self.subjects.setdefault(subject, []):
            self.subjects[subject].append(schema_id)
        return schema_id

    def answer(self, method: str, path: str, headers, body: dict | None) -> tuple[int, dict | list]:
        self.requests.append(f"{method} {path}")
        if self.outage:
            return self.outage.pop(0), {"error_code": 50001, "message": "simulated outage"}
        if self.credentials and headers.get("Authorization") != _basic(*self.credentials):
            return 401, {"error_code": 401, "message": "Unauthorized"}
        return self._route(method, path, body or {})

    def _route(self, method: str, path: str, body: dict) -> tuple[int, dict | list]:
        if method == "GET" and (m := re.fullmatch(r"/schemas/ids/(\d+)", path)):
            found = self.schemas.get(int(m[1]))
            return (200, found) if found else (404, {"error_code": 40403, "message": "Schema not found"})
        if method == "POST" and (m := re.fullmatch(r"/subjects/([^/]+)/versions", path)):
            return 200, {"id": self.add(body["schema"], body.get("schemaType", "AVRO"), m[1])}
        if method == "POST" and (m := re.fullmatch(r"/subjects/([^/]+)", path)):
            return self._version(m[1], lambda ids: next((i for i in ids if self.schemas[i]["schema"] == body["schema"]), None))
        if method == "GET" and (m := re.fullmatch(r"/subjects/([^/]+)/versions/latest", path)):
            return self._version(m[1], lambda ids: ids[-1] if ids else None)
        if method == "GET" and path.startswith("/associations/resources/"):
            return 200, []  # no topic -> subject associations: the serializer falls back to TopicNameStrategy
        return 404, {"error_code": 404, "message": f"not served here: {method} {path}"}

    def _version(self, subject: str, pick) -> tuple[int, dict]:
        ids = self.subjects.get(subject, [])
        schema_id = pick(ids)
        if schema_id is None:
            return 404, {"error_code": 40403, "message": "Schema not found"}
        return 200, {"subject": subject, "id": schema_id, "version": ids.index(schema_id) + 1, **self.schemas[schema_id]}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        status, answer = self.server.registry.answer(method, self.path.split("?")[0], self.headers, body)  # type: ignore[attr-defined]
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # requests are in FakeRegistry.requests
        pass


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeTime:
    """``sleep`` and ``clock`` for the client: sleeping records the delay and advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay

    def clock(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FakeRegistry]:
    running = FakeRegistry().start()
    yield running
    running.stop()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def client_for(url: str, fake_time: FakeTime, **kwargs) -> SchemaRegistryClient:
    return SchemaRegistryClient(url, **{"sleep": fake_time.sleep, "clock": fake_time.clock, **kwargs})


def empty_registry() -> SchemaRegistry:
    """cem's registry as the worker builds it with a real Schema Registry: no local id mappings."""
    return SchemaRegistry.from_config(confluent_ids={})


def serialize(url: str, schema: dict, record: dict, client_conf: dict | None = None, conf: dict | None = None) -> bytes:
    """A Kafka value as confluent-kafka's AvroSerializer writes it (by default auto-registering the schema)."""
    confluent = ConfluentClient({"url": url, **(client_conf or {})})
    serializer = AvroSerializer(confluent, json.dumps(schema), conf=conf)
    return serializer(record, SerializationContext(TOPIC_TOUCHPOINTS, MessageField.VALUE))


async def decode_batch(client: SchemaRegistryClient, registry: SchemaRegistry, values: list[bytes]) -> list:
    """What the worker does with a batch: resolve its ids, then decode or dead-letter each record."""
    unresolved = await client.resolve({i for v in values if (i := confluent_schema_id(v)) is not None}, registry)
    codec, out = AvroCodec(registry), []
    for value in values:
        detail = unresolved.get(confluent_schema_id(value))  # type: ignore[arg-type]
        try:
            if detail is not None:
                raise Rejected(Reason.UNKNOWN_SCHEMA, detail)
            out.append(codec.decode(value))
        except Rejected as exc:
            out.append(exc)
    return out


def evolved(add: tuple[dict, ...] = (), drop: tuple[str, ...] = ()) -> dict:
    """cem's touchpoint schema with fields added or removed: what another writer may have registered."""
    schema = copy.deepcopy(schema_json("touchpoint"))
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in drop] + list(add)
    return schema


# -- interop with confluent-kafka's serializer ------------------------------------------------------

async def test_confluent_serializer_with_cems_schema_round_trips(server: FakeRegistry, fake_time: FakeTime) -> None:
    value = serialize(server.url, schema_json("touchpoint"), TOUCHPOINT)
    schema_id = confluent_schema_id(value)
    registry = empty_registry()
    assert await client_for(server.url, fake_time).resolve([schema_id], registry) == {}
    assert registry.by_confluent_id[schema_id] is registry.reader  # same schema: decoded without resolution
    assert AvroCodec(registry).decode(value) == TOUCHPOINT


@pytest.mark.parametrize(("conf", "call"), [
    ({}, f"POST /subjects/{SUBJECT}/versions"),  # auto.register.schemas defaults to true
    ({"auto.register.schemas": False}, f"POST /subjects/{SUBJECT}"),  # look the schema up, never register
    ({"auto.register.schemas": False, "use.latest.version": True}, f"GET /subjects/{SUBJECT}/versions/latest"),
])
async def test_confluent_serializer_requests(server: FakeRegistry, fake_time: FakeTime, conf: dict, call: str) -> None:
    """Which endpoints AvroSerializer calls: what FakeRegistry must serve, and the ids cem then reads."""
    server.add(json.dumps(schema_json("touchpoint")), subject=SUBJECT)  # registered by whoever owns the subject
    value = serialize(server.url, schema_json("touchpoint"), TOUCHPOINT, conf=conf)
    associations = f"GET /associations/resources/-/{TOPIC_TOUCHPOINTS}"  # the default subject name strategy asks first
    assert server.requests == [associations, call]
    registry = empty_registry()
    await client_for(server.url, fake_time).resolve([confluent_schema_id(value)], registry)
    assert AvroCodec(registry).decode(value) == TOUCHPOINT


async def test_writer_with_an_extra_optional_field_reads_as_the_current_schema(server: FakeRegistry, fake_time: FakeTime) -> None:
    loyalty = {"name": "loyalty_tier", "type": ["null", "string"], "default": None}
    value = serialize(server.url, evolved(add=(loyalty,)), {**TOUCHPOINT, "loyalty_tier": "gold"})
    registry = empty_registry()
    await client_for(server.url, fake_time).resolve([confluent_schema_id(value)], registry)
    assert AvroCodec(registry).decode(value) == TOUCHPOINT  # the reader ignores what it does not know


async def test_writer_without_fields_the_reader_defaults(server: FakeRegistry, fake_time: FakeTime) -> None:
    old = {k: v for k, v in TOUCHPOINT.items() if k not in ("journey_stage", "attributes")}
    value = serialize(server.url, evolved(drop=("journey_stage", "attributes")), old)
    registry = empty_registry()
    await client_for(server.url, fake_time).resolve([confluent_schema_id(value)], registry)
    assert AvroCodec(registry).decode(value) == {**TOUCHPOINT, "journey_stage": None, "attributes": {}}


async def test_writer_without_a_required_field_is_dead_lettered_at_decode(server: FakeRegistry, fake_time: FakeTime) -> None:
    value = serialize(server.url, evolved(drop=("case_id", "event_id")), {k: v for k, v in TOUCHPOINT.items() if k != "event_id"})
    registry = empty_registry()
    assert await client_for(server.url, fake_time).resolve([confluent_schema_id(value)], registry) == {}
    with pytest.raises(Rejected, match="event_id"):  # no default in the reader: resolution fails
        AvroCodec(registry).decode(value)


async def test_datetime_timestamps_from_the_serializer_decode_as_epoch_ms(server: FakeRegistry, fake_time: FakeTime) -> None:
    occurred = datetime.fromtimestamp(TOUCHPOINT["occurred_at"] / 1000, timezone.utc)
    value = serialize(server.url, schema_json("touchpoint"), {**TOUCHPOINT, "occurred_at": occurred})
    registry = empty_registry()
    await client_for(server.url, fake_time).resolve([confluent_schema_id(value)], registry)
    assert AvroCodec(registry).decode(value)["occurred_at"] == TOUCHPOINT["occurred_at"]


# -- unknown ids and schemas cem cannot read -------------------------------------------------------

async def test_unknown_id_is_dead_lettered_with_a_clear_detail(server: FakeRegistry, fake_time: FakeTime) -> None:
    known = serialize(server.url, schema_json("touchpoint"), TOUCHPOINT)
    stray = b"\x00" + (99).to_bytes(4, "big") + known[5:]
    client, registry = client_for(server.url, fake_time), empty_registry()
    good, bad = await decode_batch(client, registry, [known, stray])
    assert good == TOUCHPOINT
    assert (bad.reason, bad.detail) == (Reason.UNKNOWN_SCHEMA, "schema registry has no schema with id 99")
    assert (client.fetched, client.unknown, fake_time.delays) == (1, 1, [])
    with pytest.raises(Rejected) as raised:  # even unwired, the codec dead-letters it as unknown_schema
        AvroCodec(registry).decode(stray)
    assert raised.value.reason == Reason.UNKNOWN_SCHEMA


@pytest.mark.parametrize("schema_type", ["PROTOBUF", "JSON"])
async def test_non_avro_schema_is_unknown(server: FakeRegistry, fake_time: FakeTime, schema_type: str) -> None:
    schema_id = server.add('syntax = "proto3"; message T {}' if schema_type == "PROTOBUF" else '{"type": "object"}', schema_type)
    unresolved = await client_for(server.url, fake_time).resolve([schema_id], empty_registry())
    assert unresolved == {schema_id: f"schema id {schema_id} in the schema registry is {schema_type}, not AVRO"}


async def test_unparsable_schema_is_unknown_with_the_parsers_message(server: FakeRegistry, fake_time: FakeTime) -> None:
    schema_id = server.add(json.dumps({"type": "record", "name": "T", "fields": [{"name": "a", "type": "nosuchtype"}]}))
    unresolved = await client_for(server.url, fake_time).resolve([schema_id], empty_registry())
    assert unresolved[schema_id].startswith(f"schema id {schema_id} is not a usable Avro schema: UnknownType: nosuchtype")


# -- cache --------------------------------------------------------------------------------------------

async def test_each_id_is_fetched_once(server: FakeRegistry, fake_time: FakeTime) -> None:
    schema_id = server.add(json.dumps(schema_json("touchpoint")))
    client, registry = client_for(server.url, fake_time), empty_registry()
    await client.resolve([schema_id, schema_id, 404], registry)
    assert sorted(server.requests) == ["GET /schemas/ids/1", "GET /schemas/ids/404"]
    assert await client.resolve([schema_id, 404], registry) == {404: "schema registry has no schema with id 404"}
    assert len(server.requests) == 2  # neither the found nor the unknown id is asked again
    assert client.fetched == 1


async def test_ids_mapped_locally_are_not_fetched(server: FakeRegistry, fake_time: FakeTime) -> None:
    assert await client_for(server.url, fake_time).resolve([1], SchemaRegistry.from_config()) == {}
    assert server.requests == []


# -- outages: hold and retry, then dead-letter --------------------------------------------------------

async def test_short_outage_is_held_and_retried_with_backoff(server: FakeRegistry, fake_time: FakeTime, caplog) -> None:
    schema_id = server.add(json.dumps(schema_json("touchpoint")))
    server.outage = [503, 500, 429]
    client, registry = client_for(server.url, fake_time), empty_registry()
    with caplog.at_level(logging.WARNING, logger="cem.registry"):
        assert await client.resolve([schema_id], registry) == {}
    assert fake_time.delays == pytest.approx([0.2, 0.4, 0.8])
    assert schema_id in registry.by_confluent_id
    assert [r.levelno for r in caplog.records if r.name == "cem.registry"] == [logging.WARNING] * 3
    assert (client.retries, client.failures) == (3, 0)


async def test_backoff_is_capped(server: FakeRegistry, fake_time: FakeTime) -> None:
    schema_id = server.add(json.dumps(schema_json("touchpoint")))
    server.outage = [503] * 6
    await client_for(server.url, fake_time, retry_base_s=1.0, retry_max_s=4.0).resolve([schema_id], empty_registry())
    assert fake_time.delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


async def test_outage_longer_than_the_hold_dead_letters_then_fails_fast_until_the_registry_answers(
        server: FakeRegistry, fake_time: FakeTime) -> None:
    value = serialize(server.url, schema_json("touchpoint"), TOUCHPOINT)
    client = client_for(server.url, fake_time, hold_s=10.0, retry_base_s=1.0, retry_max_s=4.0)
    registry = empty_registry()
    server.stop()  # connection refused
    [error] = await decode_batch(client, registry, [value])
    assert error.reason == Reason.UNKNOWN_SCHEMA
    assert error.detail.startswith(f"schema registry unreachable after 10 s: {server.url}: ConnectError")
    assert fake_time.delays == [1.0, 2.0, 4.0, 3.0]  # the last wait ends exactly when the hold does
    assert client.failures == 1

    fake_time.delays.clear()  # the next batch during the same outage is not held again
    assert "unreachable after 10 s" in (await client.resolve([1], registry))[1]
    assert fake_time.delays == []

    server.start()  # same port
    assert await decode_batch(client, registry, [value]) == [TOUCHPOINT]
    server.stop()  # a new outage, however soon, gets a new hold
    assert await client.resolve([7], registry)
    assert fake_time.delays == [1.0, 2.0, 4.0, 3.0]


async def test_quiet_spell_after_an_exhausted_hold_starts_a_new_hold(server: FakeRegistry, fake_time: FakeTime) -> None:
    client = client_for(server.url, fake_time, hold_s=10.0, retry_base_s=1.0, retry_max_s=4.0)
    server.stop()
    await client.resolve([1], empty_registry())
    fake_time.delays.clear()
    fake_time.now += 11  # nothing tried for longer than a hold: the registry may have been back meanwhile
    await client.resolve([1], empty_registry())
    assert fake_time.delays == [1.0, 2.0, 4.0, 3.0]


async def test_every_url_is_tried_before_backing_off(server: FakeRegistry, fake_time: FakeTime) -> None:
    schema_id = server.add(json.dumps(schema_json("touchpoint")))
    dead = FakeRegistry().start()
    dead.stop()  # a port nobody listens on
    client = client_for(f"{dead.url}, {server.url}", fake_time)
    assert await client.resolve([schema_id], empty_registry()) == {}
    assert fake_time.delays == []
    server.add(json.dumps(evolved(add=({"name": "x", "type": "int", "default": 0},))))
    await client.resolve([2], empty_registry())
    assert server.requests == ["GET /schemas/ids/1", "GET /schemas/ids/2"]


# -- authentication ---------------------------------------------------------------------------------

async def test_basic_auth(server: FakeRegistry, fake_time: FakeTime) -> None:
    server.credentials = ("cem", "s3cret")
    value = serialize(server.url, schema_json("touchpoint"), TOUCHPOINT, {"basic.auth.user.info": "cem:s3cret"})
    schema_id = confluent_schema_id(value)
    assert await client_for(server.url, fake_time, user="cem", password="s3cret").resolve([schema_id], empty_registry()) == {}
    in_url = server.url.replace("http://", "http://cem:s3cret@")
    assert await client_for(in_url, fake_time).resolve([schema_id], empty_registry()) == {}


async def test_wrong_credentials_are_loud_and_not_held(server: FakeRegistry, fake_time: FakeTime, caplog) -> None:
    server.credentials = ("cem", "s3cret")
    client, registry = client_for(server.url, fake_time, user="cem", password="wrong"), empty_registry()
    with caplog.at_level(logging.ERROR, logger="cem.registry"):
        assert await client.resolve([1, 2], registry) == dict.fromkeys([1, 2], "schema registry refused credentials (HTTP 401)")
    assert fake_time.delays == [] and len(server.requests) == 1  # the rest of the batch is not asked
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    server.credentials = ("cem", "wrong")  # fixed on the registry side: no restart needed
    server.add(json.dumps(schema_json("touchpoint")))
    assert await client.resolve([1], registry) == {}


def test_urls_keep_credentials_out_of_the_base() -> None:
    [endpoint] = parse_endpoints("https://u:p@reg.example:8081/", user="explicit", password="wins")
    assert (endpoint.base, endpoint.auth) == ("https://reg.example:8081", ("explicit", "wins"))
    with pytest.raises(ValueError, match="http"):
        parse_endpoints("reg.example:8081")

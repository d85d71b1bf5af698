"""Kafka security (``CEM_KAFKA_*``: SASL and TLS) reaches every Kafka client cem creates.

* every producer, consumer and admin client, and the Faust app, gets the configured protocol, SASL
  mechanism and credentials, and a TLS context that verifies the broker against the configured CA;
* bad settings are one clear error naming the variable, before anything connects;
* live: a produce/consume round trip over TLS with cem's options, and a plaintext client refused.

The aiokafka classes are replaced, in each module that uses them, by recording fakes whose
``start()`` raises :class:`Started`: each cem client is driven exactly up to its first connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import aiokafka
import aiokafka.admin
import pytest

from pipeline.app.kafka_security import (
    SecuritySettingsError,
    client_options,
    faust_credentials,
)
from pipeline.settings import Settings

CA_NAME = "cem-test-ca"
BOOTSTRAP = "kafka.invalid:9093"  # never dialled: the fakes stop every client at start()
SECURITY_VARS = [f"CEM_{name.upper()}" for name in Settings.__dataclass_fields__ if name.startswith("kafka_s")]


# -- a throwaway CA and a broker certificate for 127.0.0.1 ------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())

    def builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = Pki(directory / "ca.pem", directory / "broker.pem", directory / "broker.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


@pytest.fixture
def secure(pki: Pki) -> Settings:
    return Settings(kafka_bootstrap=BOOTSTRAP, kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                    kafka_sasl_username="cem-svc", kafka_sasl_password="s3cret-pw", kafka_ssl_cafile=str(pki.ca))


@pytest.fixture
def no_security_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECURITY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def security_env(monkeypatch: pytest.MonkeyPatch, secure: Settings) -> None:
    env = secure.to_env()
    for name in SECURITY_VARS:
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("CEM_KAFKA_BOOTSTRAP", BOOTSTRAP)


def assert_secured(options: dict[str, Any], secure: Settings) -> None:
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == secure.kafka_sasl_username
    assert options["sasl_plain_password"] == secure.kafka_sasl_password
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(("commonName", CA_NAME) in rdn for cert in context.get_ca_certs() for rdn in cert["subject"])


# -- recording fakes for the aiokafka clients -------------------------------------------------------
class Started(Exception):
    """A fake client's ``start()``: the cem code got as far as connecting."""


class Recorder:
    def __init__(self) -> None:
        self.clients: list[tuple[str, dict[str, Any]]] = []

    def fake(self, kind: str) -> type:
        recorder = self

        class FakeClient:
            def __init__(self, *topics: str, **kwargs: Any):
                recorder.clients.append((kind, kwargs))

            async def start(self) -> None:
                raise Started(kind)

            async def stop(self) -> None:
                pass

            async def close(self) -> None:
                pass

        return FakeClient


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recording = Recorder()
    producer, consumer, admin = recording.fake("producer"), recording.fake("consumer"), recording.fake("admin")
    for target, fake in [
        ("pipeline.runtime.embedded.AIOKafkaProducer", producer),
        ("pipeline.runtime.broker.AIOKafkaAdminClient", admin),
        ("pipeline.runtime.bench.AIOKafkaConsumer", consumer),
        ("sinks.kafka.AIOKafkaProducer", producer),
        ("pipeline.app.logs.AIOKafkaConsumer", consumer),
    ]:
        monkeypatch.setattr(target, fake)
    # imported where they are used (pipeline.cli.alerts.tail), so patched at the source
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", consumer)
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", producer)
    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", admin)
    return recording


async def until_started(step: Callable[[], Awaitable[Any]]) -> None:
    with pytest.raises(Started):
        await step()


def touchpoints(n: int = 3) -> list[dict]:
    from processors.synthetic import JourneyGenerator

    return list(JourneyGenerator(customers=2, seed=1).events(n))


# -- 1. every client receives them ------------------------------------------------------------------
async def _publisher(options: dict) -> None:
    from pipeline.runtime.embedded import TouchpointPublisher

    async with TouchpointPublisher(BOOTSTRAP, client_options=options):
        pass


async def _publish(options: dict) -> None:
    from pipeline.runtime.embedded import publish

    await publish(BOOTSTRAP, touchpoints(), client_options=options)


async def _publish_raw(options: dict) -> None:
    from pipeline.runtime.embedded import publish_raw

    await publish_raw(BOOTSTRAP, [(b"k", b"v")], client_options=options)


async def _publish_profiles(options: dict) -> None:
    from pipeline.runtime.embedded import publish_profiles

    await publish_profiles(BOOTSTRAP, [{"customer_id": "c1", "attributes": {}}], options)


async def _create_topics(options: dict) -> None:
    from pipeline.runtime.broker import create_topics

    await create_topics(BOOTSTRAP, 4, options)


async def _publish_at_rate(options: dict) -> None:
    from pipeline.runtime.run import publish_at_rate

    await publish_at_rate(BOOTSTRAP, touchpoints(), rate=100.0, client_options=options)


async def _publish_at_full_speed(options: dict) -> None:
    from pipeline.runtime.run import publish_at_rate

    await publish_at_rate(BOOTSTRAP, touchpoints(), rate=0.0, client_options=options)


async def _bench_raw_consumer(options: dict) -> None:
    from pipeline.runtime import bench

    await bench._raw_consume_rate(BOOTSTRAP, 1, options)


async def _alerts_tail(options: dict) -> None:
    from pipeline.cli.alerts import tail

    await tail(BOOTSTRAP, lambda record: None, timeout_s=1.0, client_options=options)


async def _kafka_sink(options: dict) -> None:
    from sinks.kafka import KafkaSink

    await KafkaSink(BOOTSTRAP, client_options=options).start()


async def _model_feed(options: dict) -> None:
    from pipeline.app.models import ModelFeed

    await ModelFeed(BOOTSTRAP, lambda key, model: None, options).start()


async def _broker_probe(options: dict) -> None:
    from pipeline.app.logs import BrokerProbe

    await BrokerProbe(BOOTSTRAP, options).start()


async def _erasure_list(options: dict) -> None:
    from pipeline.app.erasure import ErasureList

    await ErasureList(BOOTSTRAP, options).start()


GIVEN_OPTIONS = {  # client -> (how to start it with the given options, how many clients it creates)
    "TouchpointPublisher": (_publisher, 1),
    "publish": (_publish, 1),
    "publish_raw": (_publish_raw, 1),
    "publish_profiles": (_publish_profiles, 1),
    "create_topics": (_create_topics, 1),
    "publish_at_rate": (_publish_at_rate, 1),
    "publish_at_rate(rate=0)": (_publish_at_full_speed, 1),
    "bench raw consumer": (_bench_raw_consumer, 1),
    "alerts tail": (_alerts_tail, 1),
    "KafkaSink": (_kafka_sink, 2),
    "ModelFeed": (_model_feed, 1),
    "BrokerProbe": (_broker_probe, 1),
    "ErasureList": (_erasure_list, 1),
}


@pytest.mark.usefixtures("no_security_env")
@pytest.mark.parametrize("name", GIVEN_OPTIONS)
async def test_every_client_gets_the_options_it_is_given(name: str, secure: Settings, recorder: Recorder) -> None:
    """Each cem Kafka client passes the security options it is given to every aiokafka client it
    builds (with no CEM_KAFKA_* in the environment, so a client ignoring them would be plaintext)."""
    start, expected = GIVEN_OPTIONS[name]
    await until_started(lambda: start(client_options(secure)))
    assert len(recorder.clients) == expected, recorder.clients
    for _, options in recorder.clients:
        assert_secured(options, secure)


@pytest.mark.usefixtures("no_security_env")
async def test_clients_built_from_settings_use_them(secure: Settings, recorder: Recorder) -> None:
    """The clients that take Settings rather than options (``cem run``'s traffic, ``cem erase``)
    derive the options from those settings."""
    from pipeline.runtime.embedded import publish_erasures
    from pipeline.runtime.run import _traffic

    await until_started(lambda: _traffic(secure, None, 1.0, 10.0, 2, 0))  # the CRM profiles, first
    await until_started(lambda: publish_erasures(secure, ["c1"], "dpo", "ticket-1"))
    assert [kind for kind, _ in recorder.clients] == ["producer", "producer"]
    for _, options in recorder.clients:
        assert_secured(options, secure)


@pytest.mark.usefixtures("security_env")
def test_defaults_and_cli_commands_use_the_environment(secure: Settings, recorder: Recorder, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Without explicit options the publishers and topic set-up read CEM_KAFKA_*, and so do
    ``cem generate --bootstrap``, ``cem publish``, ``cem alerts tail`` and ``cem erase``."""
    from pipeline.cli import main
    from pipeline.runtime.broker import create_topics
    from pipeline.runtime.embedded import TouchpointPublisher, publish_raw

    async def publisher() -> None:
        async with TouchpointPublisher(BOOTSTRAP):
            pass

    for step in (publisher, lambda: publish_raw(BOOTSTRAP, [(b"k", b"v")]), lambda: create_topics(BOOTSTRAP, 4)):
        asyncio.run(until_started(step))
    lines = tmp_path / "touchpoints.jsonl"
    lines.write_text(json.dumps({"event_id": "e1", "customer_id": "c1", "occurred_at": "2026-01-01T00:00:00Z",
                                 "channel": "web", "type": "login"}) + "\n")

    for argv in (["generate", "--bootstrap", BOOTSTRAP, "--events", "3"], ["publish", str(lines)],
                 ["alerts", "tail", "--timeout", "1"], ["erase", "c1", "--requested-by", "dpo"]):
        with contextlib.suppress(Started):  # or a "cannot publish" CliError, exit code 2
            main(argv)
    capsys.readouterr()
    assert [kind for kind, _ in recorder.clients] == ["producer", "producer", "admin", "producer", "producer",
                                                      "consumer", "producer"]
    for _, options in recorder.clients:
        assert_secured(options, secure)


@pytest.mark.usefixtures("security_env")
def test_the_embedded_stack_stays_plaintext(tmp_path: Path) -> None:
    """``cem run`` / ``cem bench`` start their own plaintext Tansu on loopback: CEM_KAFKA_* meant for
    a real cluster do not leak into the embedded worker's settings (PLAINTEXT -> no options)."""
    from pipeline.runtime.run import embedded_settings

    embedded = embedded_settings(Settings.from_env(), tmp_path, 9092)
    assert client_options(embedded) == {} and faust_credentials(embedded) is None
    assert embedded.to_env()["CEM_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert client_options(Settings()) == {} and faust_credentials(Settings()) is None


@pytest.mark.usefixtures("no_security_env")
async def test_faust_app_and_its_worker_clients_get_the_credentials(secure: Settings, recorder: Recorder,
                                                                    tmp_path: Path) -> None:
    """``create_app`` gives Faust ``SASLCredentials`` with the mechanism (Faust turns them into the
    same aiokafka options for its producer, its consumers and its topic creation), and the worker's
    own clients (sink producers, log probe, model feed, erasure list) get the options too."""
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
    from faust.types.auth import SASLMechanism

    import pipeline.app.worker
    from pipeline.app.faust_app import create_app

    credentials = faust_credentials(secure)
    assert isinstance(credentials, faust.SASLCredentials) and credentials.mechanism is SASLMechanism.SCRAM_SHA_512
    with mock.patch.object(pipeline.app.worker, "connect", mock.MagicMock()):  # the ClickHouse connection: no I/O
        app, worker = create_app(secure.replace(data_dir=str(tmp_path), clickhouse_url=f"chdb://{tmp_path / 'ch'}"))
    conf = app.conf.broker_credentials
    assert isinstance(conf, faust.SASLCredentials) and conf.mechanism is SASLMechanism.SCRAM_SHA_512
    assert (conf.username, conf.password) == (secure.kafka_sasl_username, secure.kafka_sasl_password)
    assert_secured(credentials_to_aiokafka_auth(conf, app.conf.ssl_context), secure)  # Faust's consumers
    assert_secured(dict(app.producer._settings_auth()), secure)  # Faust's producer (and its admin requests)
    for start in (worker.kafka.start, worker.probe.start, worker.models.start, worker.erasures.start):
        await until_started(start)
    assert len(recorder.clients) == 5, recorder.clients
    for _, options in recorder.clients:
        assert_secured(options, secure)


def test_ssl_only_gives_tls_without_sasl(pki: Pki) -> None:
    """SSL: a verifying TLS context, no SASL options; Faust gets ``SSLCredentials``."""
    import faust

    settings = Settings(kafka_security_protocol="ssl", kafka_ssl_cafile=str(pki.ca))
    options = client_options(settings)
    assert sorted(options) == ["security_protocol", "ssl_context"] and options["security_protocol"] == "SSL"
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert isinstance(faust_credentials(settings), faust.SSLCredentials)


# -- 2. bad settings are clear errors ---------------------------------------------------------------
SASL = {"kafka_sasl_username": "cem", "kafka_sasl_password": "pw"}
BAD = {
    "unknown protocol": ({"kafka_security_protocol": "TLS"}, "CEM_KAFKA_SECURITY_PROTOCOL"),
    "unknown mechanism": ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "GSSAPI", **SASL},
                          "CEM_KAFKA_SASL_MECHANISM"),
    "no username": ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_password": "pw"}, "CEM_KAFKA_SASL_USERNAME"),
    "no password": ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "cem"}, "CEM_KAFKA_SASL_PASSWORD"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_settings_name_the_variable(case: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """An unknown protocol or mechanism, or SASL without a username/password, is a
    SecuritySettingsError naming the variable, for the options and for Faust; from the environment,
    a publisher refuses to be built and the CLI prints one line and exits 2, before any client exists."""
    from pipeline.cli import main
    from pipeline.runtime.embedded import TouchpointPublisher

    fields, variable = BAD[case]
    settings = Settings(**fields)
    for build in (client_options, faust_credentials):
        with pytest.raises(SecuritySettingsError, match=variable):
            build(settings)
    for name in SECURITY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in fields.items():
        monkeypatch.setenv(f"CEM_{name.upper()}", value)
    with pytest.raises(SecuritySettingsError, match=variable):
        TouchpointPublisher(BOOTSTRAP)
    lines = tmp_path / "touchpoints.jsonl"
    lines.write_text(json.dumps({"event_id": "e1", "customer_id": "c1", "occurred_at": "2026-01-01T00:00:00Z",
                                 "channel": "web", "type": "login"}) + "\n")
    for argv in (["generate", "--bootstrap", BOOTSTRAP, "--events", "1"], ["publish", str(lines)], ["alerts", "tail"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert variable in err and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert recorder.clients == []


# -- 3. live TLS ------------------------------------------------------------------------------------
def _wait_listening(process: subprocess.Popen, port: int, timeout_s: float = 10.0) -> bool:
    """True once the port accepts connections; False if the process exited first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    raise AssertionError(f"the broker did not listen on {port} within {timeout_s:.0f}s")


@contextlib.contextmanager
def tansu(*args: str, listen: int, advertise: int) -> Iterator[subprocess.Popen]:
    from pipeline.runtime.broker import broker_binary

    process = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{listen}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{advertise}", "--storage-engine", "memory://tansu/", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield process
    finally:
        process.kill()
        process.communicate(timeout=5)


async def _round_trip_and_refusals(bootstrap: str, ca: Path) -> None:
    """cem's own clients over TLS (topic set-up, a publish), read back; then the refusals."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    from pipeline.app.logs import read_to_end
    from pipeline.runtime.broker import create_topics
    from pipeline.runtime.embedded import publish_raw
    from schemas.contract import TOPIC_TOUCHPOINTS

    options = client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(ca)))
    await asyncio.wait_for(create_topics(bootstrap, 1, options), 30)
    await asyncio.wait_for(publish_raw(bootstrap, [(b"c1", b"over tls")], client_options=options), 30)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options)
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC_TOUCHPOINTS, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records = await asyncio.wait_for(read_to_end(consumer, [tp]), 30)
    finally:
        await consumer.stop()
    assert [(r.key, r.value) for r in records] == [(b"c1", b"over tls")]

    untrusted = client_options(Settings(kafka_security_protocol="SSL"))  # the system CAs: not ours
    for refused in ({}, untrusted):  # a plaintext client; a TLS client that does not trust the broker
        with pytest.raises((KafkaError, OSError, TimeoutError)):
            await asyncio.wait_for(publish_raw(bootstrap, [(b"c1", b"refused")], client_options=refused), 20)


@pytest.mark.integration
async def test_embedded_broker_serves_tls(pki: Pki) -> None:
    """Tansu started with a certificate serves TLS: cem's SSL options (CA file) create the topics,
    produce a record and read it back; a plaintext client and a client not trusting the CA are refused."""
    from pipeline.runtime.broker import free_port

    port = free_port()
    with tansu("--cert", str(pki.cert), "--key", str(pki.key), listen=port, advertise=port) as process:
        if not _wait_listening(process, port):
            reason = process.communicate(timeout=5)[1].strip().splitlines()[0]
            pytest.skip(f"this Tansu build cannot serve TLS: `broker --cert CERT --key KEY` exits with {reason!r} "
                        "(its CLI puts --cert and --key in one mutually exclusive clap group, yet TLS needs both; "
                        "with either flag alone the listener stays plaintext, whatever the URL scheme)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                ssl.create_default_context(cafile=str(pki.ca)).wrap_socket(sock, server_hostname="127.0.0.1").close()
        except (OSError, ssl.SSLError) as exc:
            pytest.skip(f"Tansu accepted --cert/--key but its listener does not complete a TLS handshake ({exc})")
        await _round_trip_and_refusals(f"127.0.0.1:{port}", pki.ca)


@pytest.mark.integration
async def test_tls_round_trip_through_a_tls_terminator(pki: Pki) -> None:
    """cem's SSL options carry real Kafka traffic over TLS: plaintext Tansu behind an in-test TLS
    terminator (with the broker certificate) that Tansu advertises as its listener. Topic set-up, a
    publish and a read-back succeed; a plaintext client and a client not trusting the CA are refused."""
    from pipeline.runtime.broker import free_port

    inner, outer = free_port(), free_port()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.cert, pki.key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def terminate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", inner)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    with tansu(listen=inner, advertise=outer) as process:
        assert _wait_listening(process, inner), process.communicate(timeout=5)[1]
        terminator = await asyncio.start_server(terminate, "127.0.0.1", outer, ssl=server_context)
        try:
            await _round_trip_and_refusals(f"127.0.0.1:{outer}", pki.ca)
        finally:
            terminator.close()
            await terminator.wait_closed()

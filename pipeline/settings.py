"""All settings in one place: environment variables ``CEM_*``, overridden by CLI flags.

>>> s = Settings.from_env({"CEM_KAFKA_BOOTSTRAP": "kafka:9092", "CEM_PARTITIONS": "12"})
>>> s.kafka_bootstrap, s.partitions, s.dedupe_horizon_s
('kafka:9092', 12, 86400.0)
>>> s.replace(partitions=2).partitions
2
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Kafka security, passed to Faust and to every client cem creates (see pipeline.app.kafka_security)
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""  # CA bundle that signed the brokers' certificates
    kafka_ssl_certfile: str = ""  # client certificate (mutual TLS), optional
    kafka_ssl_keyfile: str = ""
    app_id: str = "cem"
    partitions: int = 4  # of cem.touchpoints; the state table is co-partitioned
    # ClickHouse: chdb://<abs dir> (embedded) or http(s)://host:8123 (server)
    clickhouse_url: str = "chdb://./.cem/clickhouse"
    clickhouse_user: str = "default"
    clickhouse_password: str = ""
    clickhouse_database: str = "cem"
    clickhouse_migrate: bool = True  # create/upgrade the schema at start; production: `cem migrate` as its own user
    # Batching: ClickHouse wants thousands of rows per insert, about one insert per second.
    sink_flush_rows: int = 20_000
    sink_flush_interval_s: float = 1.0
    commit_interval_s: float = 1.0  # how often acked offsets are committed (a crash replays at most this much)
    take_max: int = 500  # records per fetch: the planner holds the event loop for a whole fetch, and the commits advance between fetches
    take_within_s: float = 0.05
    fetch_max_wait_ms: int = 100  # how long a fetch may wait for records (Faust's own: 1,500)
    # Stream semantics (event time)
    dedupe_horizon_s: float = 24 * 3600.0
    # Models: where the trainer runs: "worker" (the worker holding cem.model.training) or "process"
    # (`cem trainer`, a process of its own; the workers leave the topic alone)
    trainer: str = "worker"
    # ... and it publishes snapshots to cem.models at most this often
    model_publish_interval_s: float = 5.0
    # ... and checkpoint the trainer's own state (tens of MB: a horizon of labels waiting) this often
    trainer_checkpoint_interval_s: float = 60.0
    churn_horizon_s: float = 30 * 24 * 3600.0  # a churn labels the churn examples of this much event time before it
    # Alerts: cem.alerts encoding (avro | json) and AlertConfig overrides, "churn_threshold=0.8,cooldown_ms=3600000"
    alert_format: str = "avro"
    alert_rules: str = ""
    # Schemas: extra writer schemas (comma-separated .avsc paths) and Confluent id mapping "1=path,2=path"
    schema_files: str = ""
    confluent_ids: str = ""
    # Confluent Schema Registry (optional): writer schemas fetched by id, cached
    schema_registry_url: str = ""
    schema_registry_user: str = ""
    schema_registry_password: str = ""
    schema_registry_hold_s: float = 300.0  # how long a registry outage holds the input before dead-lettering
    # Privacy: extra PII patterns "name=regex;name=regex"; pseudonymous customer ids (hmac-sha256 + key)
    pii_patterns: str = ""
    pseudonymize: str = ""  # "" (off) | hmac-sha256
    pseudonym_key: str = ""  # also pseudonymises identifiers: identity stitching is off without one
    # Identity stitching (processors.stitching): what a conflict does, when an identifier is shared,
    # how many identifiers a customer holds, the country of phone numbers written without one
    identity_conflict_policy: str = "keep_first"  # | refuse
    identity_max_customers_per_identifier: int = 3
    identity_max_identifiers_per_customer: int = 20
    identity_default_country_code: str = ""  # e.g. 44: a national number then reads as +44...
    # Observability
    metrics_port: int = 9108
    metrics_host: str = "127.0.0.1"  # loopback by default; the container image sets 0.0.0.0 for scraping
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    web_token: str = ""  # bearer token, required whenever web_host is not loopback
    stall_timeout_s: float = 120.0  # input waiting and nothing committed this long: not live, then exit
    data_dir: str = "./.cem"
    log_level: str = "warn"
    # Faust group timing: short in tests (Faust joins a group in ~rebalance_timeout/2)
    session_timeout_s: float = 6.0
    rebalance_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    # Static group membership (Kafka's group.instance.id): a restarted worker with the same id takes
    # its partitions back at once instead of waiting for its old session to expire. One per replica.
    group_instance_id: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``CEM_<FIELD>`` variables (upper-case field names)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"CEM_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _coerce(f.type, raw)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with CLI overrides applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """The ``CEM_*`` variables that reproduce these settings in a child process."""
        return {f"CEM_{f.name.upper()}": str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb://")

    @property
    def shared_engine(self) -> bool:
        """Whether the engine is another process's (``cem engine``), shared by this machine's workers."""
        return self.clickhouse_url.startswith("engine://")

    def clickhouse_path(self) -> Path:
        """The chDB data directory for an embedded URL."""
        return Path(self.clickhouse_url.removeprefix("chdb://")).resolve()


def _coerce(type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    if kind == "bool":
        if raw.strip().lower() not in _BOOLEANS:
            raise ValueError(f"expected one of {', '.join(sorted(_BOOLEANS))}, got {raw!r}")
        return _BOOLEANS[raw.strip().lower()]
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

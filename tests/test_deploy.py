"""Static checks of the deployment artefacts: docker-compose.yml, deploy/Dockerfile, the per-service env files
(deploy/env), Kafka topics, ClickHouse users and init SQL, Prometheus config and rules, Grafana provisioning and
dashboards, Kubernetes manifests, the runbook's operational procedures.

Fast, no network, no Docker. Tools used when present: ``promtool`` (required when ``CI`` is set: .ci/run
installs it), ``kubectl`` (optional, for ``kubectl kustomize``), chDB (installed with the project).

Helpers meant for reuse (e.g. running every dashboard query against a live Prometheus or chDB):
``grafana_queries()`` -> [(kind, expr)] with kind "promql" or "sql"; ``substitute_macros(sql)`` expands the
grafana-clickhouse-datasource macros; ``substitute_promql_vars(expr)`` expands Grafana's PromQL variables;
``promql_metric_names(expr)`` lists the metric names an expression reads.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import required_binary

from schemas.contract import MODEL_MAX_BYTES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES_FILE = PROM_DIR / "rules" / "cem.rules.yml"
RUNBOOK = DEPLOY / "runbook.md"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = {
    "pipeline-health.json": "Pipeline health",
    "customer-experience.json": "Customer experience",
}
K8S = DEPLOY / "k8s"
CLICKHOUSE = DEPLOY / "clickhouse"
ENV_DIR = DEPLOY / "env"
CREATE_TOPICS = DEPLOY / "kafka" / "create-topics.sh"
K8S_MIGRATE = K8S / "migrate"

# ---------------------------------------------------------------------------------------------------------
# Contracts shared with the worker
# ---------------------------------------------------------------------------------------------------------

COUNTERS = {
    "cem_touchpoints_received", "cem_touchpoints_processed", "cem_touchpoints_dead_lettered",
    "cem_touchpoints_deduplicated", "cem_nps_responses", "cem_csat_responses", "cem_revenue",
    "cem_clickhouse_insert_rows", "cem_clickhouse_insert_batches", "cem_clickhouse_insert_errors",
    "cem_kafka_produced", "cem_kafka_produce_errors", "cem_consumer_rebalances", "cem_alerts", "cem_model_drift",
    "cem_source_log_restarts", "cem_schema_registry_requests",
}
HISTOGRAMS = {
    "cem_processing_latency_seconds", "cem_clickhouse_insert_duration_seconds", "cem_alert_latency_seconds",
    "cem_sentiment_score", "cem_churn_risk",
}
GAUGES = {"cem_consumer_lag", "cem_model_quality", "cem_worker_last_batch_timestamp_seconds",
          "cem_worker_last_commit_timestamp_seconds", "cem_worker_live", "cem_worker_stalled_seconds"}


def sample_names(counters=COUNTERS, histograms=HISTOGRAMS, gauges=GAUGES) -> set[str]:
    """The series names Prometheus stores for these metric families."""
    names = {f"{c}_total" for c in counters} | set(gauges)
    for h in histograms:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


EXPOSED = sample_names()
BUILTIN_SERIES = {"up"}

PARTITIONS = 12
TOPICS = {  # name -> compacted
    "cem.touchpoints": False,
    "cem.touchpoints.dlq": False,
    "cem.touchpoints.enriched": False,
    "cem.alerts": False,
    "cem.customers": True,
    "cem.models": True,
    "cem-customer_state-changelog": True,
    "cem.erasures": True,
    "cem.identity": False,
    "cem.model.training": False,
}
SINGLE_PARTITION = {"cem.model.training"}  # each model trains in one place, in one order
# Keyed by customer_id and consumed together: a partition count that differs from cem.touchpoints' silently
# sends a customer's state / erasure to another worker.
COPARTITIONED = {"cem.touchpoints", "cem-customer_state-changelog", "cem.erasures", "cem.identity"}
DAY_MS = 86_400_000
CLICKHOUSE_TABLES = {
    "touchpoints_enriched", "kpi_minute", "customer_state", "dead_letters",
    "model_metrics", "alerts", "journey_funnel", "journey_transitions",
}
WORKER_ENV = {  # the worker's documented settings, with the compose values that wire it to the stack
    "CEM_KAFKA_BOOTSTRAP", "CEM_KAFKA_SECURITY_PROTOCOL", "CEM_CLICKHOUSE_URL", "CEM_CLICKHOUSE_USER",
    "CEM_CLICKHOUSE_PASSWORD", "CEM_CLICKHOUSE_DATABASE", "CEM_CLICKHOUSE_MIGRATE", "CEM_PARTITIONS",
    "CEM_METRICS_HOST", "CEM_METRICS_PORT", "CEM_WEB_HOST", "CEM_WEB_PORT", "CEM_WEB_TOKEN",
}
METRICS_PORT = 9108
STATUS_PORT = 6066
CEM_IMAGE_SERVICES = {"worker", "trainer", "migrate", "generator"}  # compose services running the cem image
# Long-running services of the cem image that consume Kafka, serve /healthz and /readyz and are scraped.
CEM_PROCESSES = {"worker": "worker", "trainer": "trainer"}  # compose service -> its `cem` command
# Who may hold which secret (compose service -> (required, optional)); every other service gets none.
# The same policy for Kubernetes: the workers' Secret, the keys the trainer takes of it, the migration Job's Secret.
SERVICE_SECRETS = {
    "worker": ({"CEM_CLICKHOUSE_PASSWORD", "CEM_WEB_TOKEN"},
               {"CEM_PSEUDONYM_KEY", "CEM_KAFKA_SASL_PASSWORD", "CEM_SCHEMA_REGISTRY_PASSWORD"}),
    "trainer": ({"CEM_CLICKHOUSE_PASSWORD", "CEM_WEB_TOKEN"}, {"CEM_KAFKA_SASL_PASSWORD"}),
    "migrate": ({"CEM_CLICKHOUSE_PASSWORD"}, set()),
    "clickhouse": ({"CLICKHOUSE_PASSWORD", "CLICKHOUSE_CEM_WRITER_PASSWORD", "CLICKHOUSE_CEM_MIGRATE_PASSWORD",
                    "CLICKHOUSE_GRAFANA_PASSWORD"}, set()),
    "grafana": ({"GF_SECURITY_ADMIN_PASSWORD", "CLICKHOUSE_GRAFANA_PASSWORD"}, set()),
    "generator": (set(), {"CEM_KAFKA_SASL_PASSWORD"}),
}
ADMIN_SECRETS = {"CLICKHOUSE_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"}
# Variables of deployment scripts that share the CEM_ prefix without being worker settings.
NON_SETTING_CEM_VARS = {"CEM_TOPIC_PARTITIONS", "CEM_TOPIC_REPLICATION_FACTOR",
                        "CEM_COMPILED_DIR", "CEM_PURE_PYTHON"}  # read by schemas.compiled, before any setting
KAFKA_PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
KAFKA_SASL_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
FALSE = {"0", "false", "no", "off"}

def optional_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} not installed")
    return path


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        out[key.strip()] = value.strip()
    return out


_COMMENTED_ASSIGNMENT = re.compile(r"^#\s*([A-Z][A-Z0-9_]*)=(\S*)\s*$")


def read_commented_env(path: Path) -> dict[str, str]:
    """``# KEY=value`` lines of an env example: documented optional settings, off by default."""
    out = {}
    for line in path.read_text().splitlines():
        if m := _COMMENTED_ASSIGNMENT.match(line.strip()):
            out[m.group(1)] = m.group(2)
    return out


def settings_fields() -> set[str]:
    settings = pytest.importorskip("pipeline.settings")
    import dataclasses

    return {f"CEM_{f.name.upper()}" for f in dataclasses.fields(settings.Settings)}


def gitignore_patterns() -> list[tuple[Path, str]]:
    """(directory, pattern) of every .gitignore in the repository outside .venv and .git."""
    out = []
    for ignore in sorted(ROOT.rglob(".gitignore")):
        rel = ignore.relative_to(ROOT).parts
        if rel[0] in (".venv", ".git") or any(p.startswith(".") and p != ".gitignore" for p in rel[:-1]):
            continue
        for line in ignore.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((ignore.parent, line))
    return out


def is_git_ignored(path: Path) -> bool:
    """Whether git ignores ``path``: ``git check-ignore --no-index`` when the checkout has git, else a plain
    reading of the .gitignore files (basename patterns, dir-relative patterns with '/', '!' negation)."""
    import fnmatch

    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        proc = subprocess.run([git, "-C", str(ROOT), "check-ignore", "--no-index", "-q", str(path.relative_to(ROOT))],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode in (0, 1):
            return proc.returncode == 0
    ignored = False
    for base, pattern in gitignore_patterns():
        if base != ROOT and base not in path.parents:
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        rel = str(path.relative_to(base))
        hit = fnmatch.fnmatch(rel, pattern.lstrip("/")) if "/" in pattern else fnmatch.fnmatch(path.name, pattern)
        if hit:
            ignored = not negate
    return ignored


def env_files_of(service: dict) -> list[tuple[Path, bool]]:
    """(path, required) of a compose service's env_file entries."""
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str) else files
    out = []
    for entry in files:
        if isinstance(entry, str):
            out.append((ROOT / entry, True))
        else:
            out.append((ROOT / entry["path"], entry.get("required", True)))
    return out


def example_of(path: Path) -> Path:
    return path.with_name(path.name + ".example")


SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api_?key|private_?key|credential)|_KEY$")


def is_secret_name(key: str) -> bool:
    """``*_PASSWORD``, ``*_TOKEN``, ``*_KEY`` and friends (``CEM_KAFKA_SSL_KEYFILE`` is a path, not a secret)."""
    return bool(SECRET_NAME.search(key))


def test_is_secret_name():
    assert all(map(is_secret_name, ["CEM_CLICKHOUSE_PASSWORD", "CEM_WEB_TOKEN", "CEM_PSEUDONYM_KEY",
                                    "GF_SECURITY_ADMIN_PASSWORD", "CEM_KAFKA_SASL_PASSWORD"]))
    assert not any(map(is_secret_name, ["CEM_KAFKA_SSL_KEYFILE", "CEM_KAFKA_SASL_USERNAME", "CLICKHOUSE_USER",
                                        "CEM_CLICKHOUSE_USER", "CEM_PSEUDONYMIZE"]))


# ---------------------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^(\d+(\.\d+)?(us|ms|s|m|h))+$"}
_STR_OR_LIST = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_EXT = {"^x-": {}}

# A vendored, deliberately small subset of the Compose Specification schema: the keys this project uses and
# their shapes, with unknown keys rejected (a misspelt `healtcheck` must fail, not be ignored).
COMPOSE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["services"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/service"}},
        "volumes": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
        "networks": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
        "secrets": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"file": {"type": "string"}, "environment": {"type": "string"}},
            "additionalProperties": False, "minProperties": 1}},
        "configs": {"type": "object"},
    },
    "patternProperties": _EXT,
    "additionalProperties": False,
    "$defs": {
        "service": {
            "type": "object",
            "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
            "properties": {
                "image": {"type": "string", "minLength": 1},
                "build": {"oneOf": [{"type": "string"}, {
                    "type": "object", "required": ["context"],
                    "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"},
                                   "args": {"type": ["object", "array"]}, "target": {"type": "string"}},
                    "additionalProperties": False}]},
                "command": _STR_OR_LIST,
                "entrypoint": _STR_OR_LIST,
                "environment": {"oneOf": [
                    {"type": "object", "additionalProperties": _SCALAR},
                    {"type": "array", "items": {"type": "string"}}]},
                "env_file": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [
                    {"type": "string"},
                    {"type": "object", "required": ["path"], "properties": {
                        "path": {"type": "string"}, "required": {"type": "boolean"}}, "additionalProperties": False}]}}]},
                "ports": {"type": "array", "items": {"type": ["string", "number", "object"]}},
                "expose": {"type": "array", "items": {"type": ["string", "number"]}},
                "volumes": {"type": "array", "items": {"type": ["string", "object"]}},
                "secrets": {"type": "array", "items": {"type": ["string", "object"]}},
                "depends_on": {"oneOf": [
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "object", "additionalProperties": {
                        "type": "object",
                        "properties": {"condition": {"enum": ["service_started", "service_healthy",
                                                              "service_completed_successfully"]},
                                       "restart": {"type": "boolean"}, "required": {"type": "boolean"}},
                        "required": ["condition"],
                        "additionalProperties": False}}]},
                "healthcheck": {
                    "type": "object",
                    "properties": {
                        "test": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1,
                                                                 "items": {"type": "string"}}]},
                        "interval": _DURATION, "timeout": _DURATION, "start_period": _DURATION,
                        "start_interval": _DURATION, "retries": {"type": "integer", "minimum": 1},
                        "disable": {"type": "boolean"}},
                    "additionalProperties": False},
                "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                "deploy": {"type": "object", "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "resources": {"type": "object", "properties": {
                        "limits": {"type": "object"}, "reservations": {"type": "object"}},
                        "additionalProperties": False},
                    "restart_policy": {"type": "object"}, "update_config": {"type": "object"}},
                    "additionalProperties": False},
                "profiles": {"type": "array", "items": {"type": "string"}},
                "hostname": {"type": "string"},
                "container_name": {"type": "string"},
                "stop_grace_period": _DURATION,
                "ulimits": {"type": "object"},
                "logging": {"type": "object", "properties": {"driver": {"type": "string"}, "options": {"type": "object"}},
                            "additionalProperties": False},
                "networks": {"type": ["array", "object"]},
                "labels": {"type": ["array", "object"]},
                "user": {"type": "string"},
                "working_dir": {"type": "string"},
                "init": {"type": "boolean"},
                "read_only": {"type": "boolean"},
                "tmpfs": _STR_OR_LIST,
                "pull_policy": {"enum": ["always", "never", "missing", "build", "if_not_present"]},
            },
            "patternProperties": _EXT,
            "additionalProperties": False,
        }
    },
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def is_long_running(service: dict) -> bool:
    return str(service.get("restart", "no")) != "no"


def parse_duration_s(text: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text))


def test_compose_matches_schema(compose):
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(COMPOSE_SCHEMA)
    errors = sorted(jsonschema.Draft202012Validator(COMPOSE_SCHEMA).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_has_the_stack(compose):
    svc = services(compose)
    assert {"kafka", "kafka-init", "clickhouse", "worker", "trainer", "generator", "prometheus", "grafana"} <= set(svc)
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    assert svc["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert svc["prometheus"]["image"].startswith("prom/prometheus:")
    assert svc["grafana"]["image"].startswith("grafana/grafana:")


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return tag != "latest" and not tag.startswith("latest-") and bool(re.match(r"^v?\d+(\.\d+)+", tag))


def test_every_image_is_pinned_to_a_version(compose):
    for name, service in services(compose).items():
        if "image" in service:
            assert image_is_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned to a version"
        else:
            pytest.fail(f"{name}: builds without an image name; give it a pinned `image:`")
    assert image_is_pinned("apache/kafka:3.9.1") and not image_is_pinned("grafana/grafana:latest")
    assert not image_is_pinned("grafana/grafana") and not image_is_pinned("registry:5000/cem")


def test_long_running_services_have_healthchecks(compose):
    for name, service in services(compose).items():
        if not is_long_running(service):
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: long-running service without a health check"
        test = check["test"]
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: healthcheck test {test!r}"
        for key in ("interval", "timeout"):
            assert key in check, f"{name}: healthcheck without {key}"


def test_one_shot_services_do_not_restart(compose):
    for name in ("kafka-init", "migrate"):
        one_shot = services(compose)[name]
        assert str(one_shot.get("restart")) == "no", name
        assert "healthcheck" not in one_shot, name


def test_depends_on_targets_exist_with_sound_conditions(compose):
    svc = services(compose)
    for name, service in svc.items():
        deps = service.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            assert target in svc, f"{name} depends on unknown service {target}"
            assert target != name
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in svc[target], f"{name} waits for {target} to be healthy; it has no healthcheck"
            if condition == "service_completed_successfully":
                assert not is_long_running(svc[target]), f"{name} waits for long-running {target} to exit"
            # A service in a profile may not be a dependency of a service that always starts.
            if svc[target].get("profiles"):
                assert service.get("profiles"), f"{name} depends on {target}, which only starts with a profile"
    for name in CEM_PROCESSES:
        deps = svc[name]["depends_on"]
        assert deps["kafka-init"]["condition"] == "service_completed_successfully", name
        assert deps["clickhouse"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", f"{name}: the schema exists first"
    assert svc["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert svc["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_volumes_and_secrets_are_declared_and_bind_mounts_exist(compose):
    declared_volumes = set(compose.get("volumes") or {})
    declared_secrets = set(compose.get("secrets") or {})
    used_volumes = set()
    for name, service in services(compose).items():
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared at top level"
                used_volumes.add(source)
        for secret in service.get("secrets") or []:
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in declared_secrets, f"{name}: secret {source} not declared at top level"
    assert declared_volumes == used_volumes, f"declared but unused volumes: {declared_volumes - used_volumes}"


LITERAL_SECRET_LINE = re.compile(
    r"(?i)\b[\w.-]*(password|passwd|secret|token|api_?key)[\w.-]*\s*[:=]\s*(?![\s\"']*\$\{)[\"']?[^\s\"'#]+")


def literal_secret(line: str) -> bool:
    """A ``KEY: value`` / ``KEY=value`` with a secret-looking key and a value that is not an interpolation."""
    code = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0]
    code = re.sub(r"\$\{[^}]*\}", "${}", code)  # ${VAR:?message} interpolations are fine
    return bool(LITERAL_SECRET_LINE.search(code))


def test_no_literal_secrets_in_compose(compose):
    text = COMPOSE_FILE.read_text()
    for n, line in enumerate(text.splitlines(), 1):
        assert not literal_secret(line), f"docker-compose.yml:{n}: literal secret? {line.strip()!r}"
    # Not even interpolated: a secret reaches a service through its own env file only (deploy/env), so that
    # which service holds which secret is decided in one place (test_secrets_reach_only_the_services_...).
    for name, service in services(compose).items():
        secret_keys = sorted(k for k in env_of(service) if is_secret_name(k))
        assert not secret_keys, f"{name}: secret-looking keys in `environment:` {secret_keys}; use its env file"
    # The detector itself.
    assert literal_secret("      GF_SECURITY_ADMIN_PASSWORD: hunter2")
    assert literal_secret("      - CLICKHOUSE_PASSWORD=hunter2")
    assert literal_secret('      CEM_CLICKHOUSE_PASSWORD: "hunter2"  # comment')
    assert not literal_secret("      CLICKHOUSE_PASSWORD: ${CLICKHOUSE_PASSWORD:?set it}")
    assert not literal_secret("    # CLICKHOUSE_PASSWORD=example in a comment")


def test_env_files_exist_as_examples_and_are_ignored(compose):
    used = set()
    for name, service in services(compose).items():
        for path, _required in env_files_of(service):
            used.add(path)
            assert path.parent == ENV_DIR, f"{name}: env file {path} outside deploy/env/"
            example = example_of(path)
            assert example.is_file(), f"{name}: env file {path} has no committed example {example.name}"
            assert is_git_ignored(path), f"{path.relative_to(ROOT)} holds secrets and must be git-ignored"
            assert not is_git_ignored(example), f"{example.relative_to(ROOT)} must be committed"
            # README-style header: what the file is for and how to create it.
            header = example.read_text().splitlines()[:3]
            assert all(line.startswith("#") for line in header) and "cp " in example.read_text(), example.name
    examples = {p for p in ENV_DIR.glob("*.env.example")}
    assert {example_of(p) for p in used} == examples, "an env example no service reads, or the reverse"
    assert not (DEPLOY / "cem.env.example").exists(), "the single shared env file is gone: deploy/env/<service>.env"
    assert is_git_ignored(DEPLOY / "cem.env"), "a leftover deploy/cem.env (legacy, every secret) must stay ignored"


def test_each_env_file_serves_one_service(compose):
    """A shared env file hands every secret in it to every service that reads it (the review's finding)."""
    readers: dict[Path, list[str]] = {}
    for name, service in services(compose).items():
        for path, _ in env_files_of(service):
            readers.setdefault(path, []).append(name)
    shared = {str(p.relative_to(ROOT)): names for p, names in readers.items() if len(names) > 1}
    assert not shared, f"env files read by several services: {shared}"


def service_secret_keys(service: dict) -> tuple[set[str], set[str]]:
    """(active, commented-out) secret-looking keys a compose service gets from its env files' examples."""
    active, commented = set(), set()
    for path, _ in env_files_of(service):
        example = example_of(path)
        active |= {k for k in read_env_file(example) if is_secret_name(k)}
        commented |= {k for k in read_commented_env(example) if is_secret_name(k)}
    return active, commented


def test_secrets_reach_only_the_services_that_need_them(compose):
    svc = services(compose)
    for name, service in svc.items():
        active, commented = service_secret_keys(service)
        required, optional = SERVICE_SECRETS.get(name, (set(), set()))
        assert required <= active, f"{name}: missing secrets {sorted(required - active)} in its env file"
        extra = (active | commented) - required - optional
        assert not extra, f"{name} must not receive {sorted(extra)}"
        assert not optional & active, f"{name}: optional secrets stay commented out: {sorted(optional & active)}"
    for name in CEM_PROCESSES:
        active, commented = service_secret_keys(svc[name])
        both = active | commented
        assert not both & ADMIN_SECRETS, f"{name}: never the ClickHouse admin or Grafana password"
        assert not {k for k in both if k.startswith(("CLICKHOUSE_", "GF_"))}, f"{name}: no other service's secret"
    _, worker_commented = service_secret_keys(svc["worker"])
    assert {"CEM_PSEUDONYM_KEY", "CEM_KAFKA_SASL_PASSWORD"} <= worker_commented, \
        "document the optional worker secrets (commented out) in worker.env.example"
    grafana_all = set().union(*service_secret_keys(svc["grafana"]))
    assert grafana_all == SERVICE_SECRETS["grafana"][0], "Grafana: its admin password and the reader's, nothing else"
    for name in set(svc) - set(SERVICE_SECRETS):
        assert not env_files_of(svc[name]), f"{name} needs no secrets and reads no env file"


def test_env_examples_hold_placeholders_only():
    for example in sorted(ENV_DIR.glob("*.env.example")):
        for key, value in {**read_commented_env(example), **read_env_file(example)}.items():
            if is_secret_name(key):
                assert value.startswith("CHANGE_ME"), f"{key} in {example.name} must be a CHANGE_ME placeholder"
                assert "$" not in value


def test_cem_names_in_deployment_files_are_settings():
    """Every CEM_* name written anywhere in the deployment (compose, env examples, Dockerfile, k8s, ClickHouse,
    Grafana, runbook; comments included, so that documented examples are right too) is a worker setting."""
    fields = settings_fields()
    assert fields >= WORKER_ENV, f"worker settings missing from pipeline.settings: {WORKER_ENV - fields}"
    files = [COMPOSE_FILE] + [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and p.suffix != ".json"]
    unknown = {}
    for path in files:
        names = set(re.findall(r"\bCEM_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        bad = names - fields - NON_SETTING_CEM_VARS
        if bad:
            unknown[str(path.relative_to(ROOT))] = sorted(bad)
    assert not unknown, f"CEM_* names the worker does not read: {unknown}"


def test_published_ports_bind_to_localhost(compose):
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: port {port!r} not bound to 127.0.0.1"


def test_kafka_runs_kraft_without_auto_topic_creation(compose):
    kafka = services(compose)["kafka"]
    env = env_of(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert not any("zookeeper" in k.lower() for k in env)


def test_worker_service(compose):
    svc = services(compose)
    worker = svc["worker"]
    assert worker["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert (ROOT / worker["build"]["dockerfile"]).is_file()
    assert worker["image"] == f"cem:{project_version()}", "worker image tag must follow pyproject's version"
    assert worker["command"][0] == "worker"
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker and not worker.get("ports"), "replicas cannot share a name or host port"
    assert parse_duration_s(worker["stop_grace_period"]) >= 30
    env = env_of(worker)
    secrets = {"CEM_CLICKHOUSE_PASSWORD", "CEM_WEB_TOKEN"}
    assert WORKER_ENV - secrets <= set(env)
    assert env["CEM_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["CEM_CLICKHOUSE_URL"] == "http://clickhouse:8123"
    assert env["CEM_CLICKHOUSE_USER"] == "cem_writer"
    assert env["CEM_CLICKHOUSE_MIGRATE"].lower() in FALSE, "the workers must not migrate (cem_writer has no DDL)"
    (env_file, required), = env_files_of(worker)
    assert env_file == ENV_DIR / "worker.env" and required
    assert secrets <= set(read_env_file(example_of(env_file))), "the password and the web token come from worker.env"
    overridden = set(read_env_file(example_of(env_file))) & set(env)
    assert not overridden, f"worker.env sets {sorted(overridden)}, which `environment:` overrides anyway"
    # Container binds: beyond loopback for scraping and probes (the code's default is 127.0.0.1).
    assert env["CEM_METRICS_HOST"] == "0.0.0.0" and env["CEM_WEB_HOST"] == "0.0.0.0"
    assert int(env["CEM_METRICS_PORT"]) == METRICS_PORT and int(env["CEM_WEB_PORT"]) == STATUS_PORT
    partitions = int(env["CEM_PARTITIONS"])
    assert partitions == int(env_of(svc["kafka-init"])["CEM_TOPIC_PARTITIONS"]) == PARTITIONS
    assert worker["deploy"]["replicas"] <= partitions
    # The health check uses the token-free liveness endpoint.
    check = " ".join(worker["healthcheck"]["test"])
    assert f"127.0.0.1:{STATUS_PORT}/healthz" in check and "/status" not in check
    assert env["CEM_TRAINER"] == "process", "the trainer service trains the models, not a worker's event loop"


def test_trainer_service(compose):
    """One `cem trainer` beside the workers, wired like them, configured like them (CEM_TRAINER=process)."""
    svc = services(compose)
    trainer, worker = svc["trainer"], svc["worker"]
    assert trainer["image"] == worker["image"] and trainer.get("build") == worker["build"]
    assert trainer["command"] == ["trainer"]
    assert is_long_running(trainer)
    assert trainer["deploy"]["replicas"] == 1, "exactly one trainer owns the training partition"
    block = COMPOSE_FILE.read_text().split("\n  trainer:", 1)[1].split("\n  generator:", 1)[0]
    assert "exactly one" in " ".join(block.lower().split()), "say why the trainer is never scaled"
    assert "container_name" not in trainer and not trainer.get("ports")
    assert parse_duration_s(trainer["stop_grace_period"]) >= 30, "time to write its last checkpoint"
    env, worker_env = env_of(trainer), env_of(worker)
    assert env["CEM_TRAINER"] == worker_env["CEM_TRAINER"] == "process"
    for key in ("CEM_KAFKA_BOOTSTRAP", "CEM_KAFKA_SECURITY_PROTOCOL", "CEM_CLICKHOUSE_URL", "CEM_CLICKHOUSE_USER",
                "CEM_CLICKHOUSE_DATABASE", "CEM_METRICS_HOST", "CEM_METRICS_PORT", "CEM_WEB_HOST", "CEM_WEB_PORT"):
        assert env[key] == worker_env[key], f"trainer and workers must agree on {key}"
    assert env["CEM_CLICKHOUSE_MIGRATE"].lower() in FALSE
    (env_file, required), = env_files_of(trainer)
    assert env_file == ENV_DIR / "trainer.env" and required
    settings = read_env_file(example_of(env_file))
    assert {"CEM_CLICKHOUSE_PASSWORD", "CEM_WEB_TOKEN"} <= set(settings)
    assert not set(settings) & set(env), "trainer.env repeats what `environment:` overrides anyway"
    check = " ".join(trainer["healthcheck"]["test"])
    assert f"127.0.0.1:{STATUS_PORT}/healthz" in check and "/status" not in check


def test_migrate_service(compose):
    svc = services(compose)
    migrate, worker = svc["migrate"], svc["worker"]
    assert migrate["image"] == worker["image"] and migrate.get("build") == worker["build"]
    assert migrate["command"] == ["migrate"]
    assert str(migrate["restart"]) == "no" and "healthcheck" not in migrate and not migrate.get("ports")
    env, worker_env = env_of(migrate), env_of(worker)
    assert env["CEM_CLICKHOUSE_USER"] == "cem_migrate"
    for key in ("CEM_CLICKHOUSE_URL", "CEM_CLICKHOUSE_DATABASE"):
        assert env[key] == worker_env[key], f"migrate and workers must agree on {key}"
    assert env.get("CEM_CLICKHOUSE_MIGRATE", "true").lower() not in FALSE
    (env_file, required), = env_files_of(migrate)
    assert env_file == ENV_DIR / "migrate.env" and required
    assert {k for k in read_env_file(example_of(env_file)) if is_secret_name(k)} == {"CEM_CLICKHOUSE_PASSWORD"}


def broker_protocol_for(compose: dict, bootstrap: str) -> str:
    """The security protocol of the bundled broker's listener advertised at ``bootstrap``."""
    env = env_of(services(compose)["kafka"])
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, _, address = listener.partition("://")
        if address == bootstrap:
            return protocols[name]
    raise AssertionError(f"no advertised listener at {bootstrap}")


def test_kafka_client_security_settings_in_compose(compose):
    svc = services(compose)
    for name in CEM_IMAGE_SERVICES:
        env = env_of(svc[name])
        protocol = env.get("CEM_KAFKA_SECURITY_PROTOCOL")
        assert protocol in KAFKA_PROTOCOLS, f"{name}: CEM_KAFKA_SECURITY_PROTOCOL={protocol!r}"
        bootstrap = env["CEM_KAFKA_BOOTSTRAP"]
        if bootstrap.split(",")[0].startswith("kafka:"):
            assert protocol == broker_protocol_for(compose, bootstrap), f"{name}: protocol differs from the broker's"
        if protocol.startswith("SASL_"):
            assert env.get("CEM_KAFKA_SASL_MECHANISM") in KAFKA_SASL_MECHANISMS and env.get("CEM_KAFKA_SASL_USERNAME")
            active, _ = service_secret_keys(svc[name])
            assert "CEM_KAFKA_SASL_PASSWORD" in active, f"{name}: SASL without a password in its env file"
        if protocol in ("SSL", "SASL_SSL"):
            assert env.get("CEM_KAFKA_SSL_CAFILE", "").startswith("/"), f"{name}: TLS without a CA file"
    assert env_of(svc["generator"])["CEM_KAFKA_BOOTSTRAP"] == svc["generator"]["command"][
        svc["generator"]["command"].index("--bootstrap") + 1]
    # The file documents how to point the clients at a secured cluster.
    comments = "\n".join(l.strip().lstrip("#").strip() for l in COMPOSE_FILE.read_text().splitlines()
                         if l.strip().startswith("#"))
    for needle in ("CEM_KAFKA_SECURITY_PROTOCOL: SASL_SSL", "CEM_KAFKA_SASL_MECHANISM:", "CEM_KAFKA_SASL_USERNAME:",
                   "CEM_KAFKA_SSL_CAFILE:", "CEM_KAFKA_SASL_PASSWORD"):
        assert needle in comments, f"commented SASL_SSL example lacks {needle}"


def test_compose_network_is_pinned(compose):
    subnet = compose_subnet(compose)
    assert subnet.version == 4 and subnet.is_private and subnet.prefixlen >= 12, subnet
    for name, service in services(compose).items():
        nets = service.get("networks")
        if nets is not None:
            assert "default" in nets, f"{name} leaves the pinned default network"
        assert service.get("network_mode") is None, name


def compose_subnet(compose: dict) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    configs = ((compose.get("networks") or {}).get("default") or {}).get("ipam", {}).get("config") or []
    assert len(configs) == 1 and configs[0].get("subnet"), "pin the default network's subnet (networks.default.ipam)"
    return ipaddress.ip_network(configs[0]["subnet"])


def test_generator_is_optional(compose):
    gen = services(compose)["generator"]
    assert gen["profiles"] == ["generator"]
    assert gen["image"] == services(compose)["worker"]["image"]
    cmd = gen["command"]
    assert cmd[0] == "generate" and {"--bootstrap", "--rate", "--customers"} <= set(cmd)
    assert cmd[cmd.index("--bootstrap") + 1] == "kafka:9092"
    # Its env file (a Kafka SASL password, if any) is optional: the generator starts without one.
    assert [(p.name, required) for p, required in env_files_of(gen)] == [("generator.env", False)]


def test_clickhouse_prometheus_grafana_mounts(compose):
    svc = services(compose)
    ch_mounts = dict(v.split(":")[:2] for v in svc["clickhouse"]["volumes"] if v.startswith("./"))
    assert ch_mounts["./deploy/clickhouse/init.sql"].startswith("/docker-entrypoint-initdb.d/")
    assert ch_mounts["./deploy/clickhouse/users.d/cem-users.xml"].startswith("/etc/clickhouse-server/users.d/")
    prom_mounts = dict(v.split(":")[:2] for v in svc["prometheus"]["volumes"] if v.startswith("./"))
    assert prom_mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in svc["prometheus"]["command"]
    graf = svc["grafana"]
    graf_mounts = dict(v.split(":")[:2] for v in graf["volumes"] if v.startswith("./"))
    assert graf_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "cem.yml")["providers"][0]
    assert graf_mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    plugins = env_of(graf)["GF_INSTALL_PLUGINS"]
    assert re.search(r"grafana-clickhouse-datasource \d+\.\d+\.\d+", plugins), "pin the ClickHouse plugin version"
    home = env_of(graf)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"]) and Path(home).name in DASHBOARDS


# ---------------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[str]:
    """Instructions of deploy/Dockerfile, comments dropped and continuation lines joined."""
    lines, current = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += " " + line.strip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        lines.append(" ".join(current.split()))
        current = ""
    return lines


def dockerfile_final_env() -> dict[str, str]:
    """ENV of the runtime (last) stage."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    env = {}
    for line in instructions[last_from:]:
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in line.split()[1:])
    return env


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("python:3.11-slim")
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in instructions if line.startswith("FROM"))
    assert 'ENTRYPOINT ["cem"]' in instructions
    assert any(line.startswith("USER ") and not line.split()[1].startswith(("root", "0")) for line in instructions)
    expose = next(line for line in instructions if line.startswith("EXPOSE"))
    assert {str(METRICS_PORT), str(STATUS_PORT)} <= set(expose.split()[1:])
    assert "pip wheel" in text and "pip install --no-index" in text
    # A non-root user that exists in the image, the uid the Kubernetes manifests run as.
    joined = dockerfile_instructions()
    user = next(line for line in joined if line.startswith("USER ")).split()[1]
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0", "USER by number, so runAsNonRoot can verify it"
    assert re.search(rf"useradd [^&]*--uid {uid}\b", " ".join(joined)), f"USER {uid}: no such user is created"
    for manifest in (K8S / "deployment.yaml", K8S_TRAINER, K8S_MIGRATE / "job.yaml"):
        pod = load_yaml_all(manifest)[0]["spec"]["template"]["spec"]
        assert str(pod["securityContext"]["runAsUser"]) == uid, manifest.name
    # The servers listen beyond loopback in a container (scraping, probes); the code's default is 127.0.0.1.
    env = dockerfile_final_env()
    assert env.get("CEM_WEB_HOST") == "0.0.0.0" and env.get("CEM_METRICS_HOST") == "0.0.0.0"
    assert not {k for k in env if is_secret_name(k)}, "no secret baked into the image"
    for line in joined:
        if line.startswith("HEALTHCHECK") and "NONE" not in line:
            assert "/healthz" in line and "/status" not in line, "health checks use the token-free /healthz"


def test_dockerignore_allows_only_the_package():
    lines = [l.strip() for l in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "allow-list: exclude everything first (.venv, .git, data dirs)"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in found["include"]}
    assert {"pyproject.toml", *packages} <= allowed


# ---------------------------------------------------------------------------------------------------------
# Kafka topics
# ---------------------------------------------------------------------------------------------------------

STUB = """#!{python}
import json, os, sys
args = sys.argv[1:]
log = os.environ["STUB_LOG"]
if "--describe" in args:
    topic = args[args.index("--topic") + 1]
    parts = os.environ.get("STUB_DESCRIBE_PARTITIONS")
    if os.environ.get("STUB_DESCRIBE_TOPIC", topic) != topic:  # the override only for that topic
        parts = None
    if parts is None:
        for line in open(log):
            call = json.loads(line)
            if "--create" in call and call[call.index("--topic") + 1] == topic:
                parts = call[call.index("--partitions") + 1]
    print(f"Topic: {{topic}}\\tTopicId: abc\\tPartitionCount: {{parts}}\\tReplicationFactor: 1\\tConfigs: ")
    print(f"\\tTopic: {{topic}}\\tPartition: 0\\tLeader: 1\\tReplicas: 1\\tIsr: 1")
with open(log, "a") as f:
    f.write(json.dumps(args) + "\\n")
"""


def run_create_topics(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Runs create-topics.sh with kafka-topics.sh and kafka-configs.sh stubbed; both log their argv."""
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.touch()
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KAFKA_TOPICS_BIN": str(stub),
                "KAFKA_CONFIGS_BIN": str(stub), "STUB_LOG": str(log), **env}
    proc = subprocess.run(["bash", str(CREATE_TOPICS)], env=full_env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc, calls


def created_topics(calls: list[list[str]]) -> dict[str, dict]:
    out = {}
    for call in calls:
        if "--create" not in call:
            continue
        configs = dict(call[i + 1].split("=", 1) for i, a in enumerate(call) if a == "--config")
        out[call[call.index("--topic") + 1]] = {
            "partitions": int(call[call.index("--partitions") + 1]),
            "rf": int(call[call.index("--replication-factor") + 1]),
            "bootstrap": call[call.index("--bootstrap-server") + 1],
            "if_not_exists": "--if-not-exists" in call,
            "configs": configs,
        }
    return out


def altered_configs(calls: list[list[str]]) -> dict[str, dict[str, str]]:
    """kafka-configs.sh --alter --entity-type topics calls: topic -> configs set."""
    out: dict[str, dict[str, str]] = {}
    for call in calls:
        if "--alter" not in call:
            continue
        assert call[call.index("--entity-type") + 1] == "topics"
        configs = dict(item.split("=", 1) for item in call[call.index("--add-config") + 1].split(","))
        out.setdefault(call[call.index("--entity-name") + 1], {}).update(configs)
    return out


def test_create_topics_script(tmp_path):
    subprocess.run(["bash", "-n", str(CREATE_TOPICS)], check=True)
    assert os.access(CREATE_TOPICS, os.X_OK)
    proc, calls = run_create_topics(tmp_path, KAFKA_BOOTSTRAP="kafka:9092", CEM_TOPIC_PARTITIONS=str(PARTITIONS))
    assert proc.returncode == 0, proc.stderr
    topics = created_topics(calls)
    assert set(topics) == set(TOPICS)
    for name, compacted in TOPICS.items():
        t = topics[name]
        partitions = 1 if name in SINGLE_PARTITION else PARTITIONS
        assert t["partitions"] == partitions and t["rf"] == 1 and t["bootstrap"] == "kafka:9092" and t["if_not_exists"]
        assert t["configs"]["cleanup.policy"] == ("compact" if compacted else "delete"), name
        assert "min.insync.replicas" not in t["configs"]
    # The trainer's checkpoint is tens of MB: the topic must take what the pipeline's producers send.
    assert int(topics["cem.models"]["configs"]["max.message.bytes"]) == MODEL_MAX_BYTES
    assert {t["partitions"] for name, t in topics.items() if name in COPARTITIONED} == {PARTITIONS}


def test_create_topics_privacy_settings(tmp_path):
    """The dead-letter topic (original bytes, maybe personal data) expires within a week; the input topic takes
    broker time. Both on creation and, since --if-not-exists leaves existing topics alone, enforced each run."""
    proc, calls = run_create_topics(tmp_path)
    assert proc.returncode == 0, proc.stderr
    topics, altered = created_topics(calls), altered_configs(calls)
    dlq = int(topics["cem.touchpoints.dlq"]["configs"]["retention.ms"])
    assert DAY_MS <= dlq <= 7 * DAY_MS, f"DLQ retention {dlq} ms: at least a day to replay, at most a week"
    assert topics["cem.touchpoints"]["configs"]["message.timestamp.type"] == "LogAppendTime"
    assert altered["cem.touchpoints.dlq"]["retention.ms"] == str(dlq)
    assert altered["cem.touchpoints"]["message.timestamp.type"] == "LogAppendTime"
    assert set(altered) == {"cem.touchpoints", "cem.touchpoints.dlq"}, "enforce only the privacy settings"
    # The erasure topic: compacted, keyed like cem.touchpoints, same partitions.
    erasures = topics["cem.erasures"]
    assert erasures["configs"]["cleanup.policy"] == "compact" and erasures["partitions"] == PARTITIONS
    # The runbook gives the same retention for the manual command.
    assert f"retention.ms={dlq}" in runbook_section("Dead-letter topic: access and retention")


def test_create_topics_production_replication(tmp_path):
    proc, calls = run_create_topics(tmp_path, CEM_TOPIC_REPLICATION_FACTOR="3", KAFKA_COMMAND_CONFIG="/etc/client.properties")
    assert proc.returncode == 0, proc.stderr
    for t in created_topics(calls).values():
        assert t["rf"] == 3 and t["configs"]["min.insync.replicas"] == "2"
    assert all("--command-config" in call for call in calls)


def test_create_topics_rejects_mismatched_partitions(tmp_path):
    proc, _ = run_create_topics(tmp_path, STUB_DESCRIBE_PARTITIONS="4")
    assert proc.returncode != 0
    assert "expected 12" in proc.stderr


@pytest.mark.parametrize("topic", sorted(COPARTITIONED))
def test_create_topics_checks_each_copartitioned_topic(tmp_path, topic):
    proc, calls = run_create_topics(tmp_path, STUB_DESCRIBE_PARTITIONS="4", STUB_DESCRIBE_TOPIC=topic)
    assert proc.returncode != 0, f"an existing {topic} with 4 partitions must stop the deployment"
    assert topic in proc.stderr and "expected 12" in proc.stderr
    assert not altered_configs(calls), "stop before changing anything else"


# ---------------------------------------------------------------------------------------------------------
# ClickHouse
# ---------------------------------------------------------------------------------------------------------

def clickhouse_users() -> ET.Element:
    return ET.parse(CLICKHOUSE / "users.d" / "cem-users.xml").getroot()


CLICKHOUSE_USERS = {"cem_writer", "cem_migrate", "grafana"}
ERASURE_TABLES = {"touchpoints_enriched", "customer_state", "alerts", "dead_letters"}
ERASURE_PRIVILEGES = {"ALTER UPDATE", "ALTER DELETE"}
# The minimum for the worker's idempotent DDL (CREATE DATABASE/TABLE/VIEW IF NOT EXISTS, ALTER TABLE ... ADD
# COLUMN / ADD PROJECTION, MATERIALIZE PROJECTION for existing parts) plus SELECT for introspection, and
# recording the layout it applied (INSERT INTO cem.schema_version, sinks/clickhouse.py create_schema).
MIGRATE_PRIVILEGES = {"SELECT", "CREATE DATABASE", "CREATE TABLE", "CREATE VIEW", "ALTER ADD COLUMN",
                      "ALTER ADD PROJECTION", "ALTER MATERIALIZE PROJECTION"}
MIGRATE_GRANTS = {"cem.*": MIGRATE_PRIVILEGES, "cem.schema_version": {"INSERT"}}


def compose_clients_of(compose: dict, user: str) -> list[tuple[str, str]]:
    """(compose service, variable holding the password) of each client that connects as ClickHouse ``user``
    (cem_writer: the workers and the trainer)."""
    if user == "grafana":
        ds = provisioned_datasources()["cem-clickhouse"]
        assert ds["jsonData"]["username"] == "grafana"
        return [("grafana", ds["secureJsonData"]["password"].strip("${}"))]
    names = [n for n, svc in services(compose).items() if env_of(svc).get("CEM_CLICKHOUSE_USER") == user]
    assert names, f"no service connects as {user}"
    return [(name, "CEM_CLICKHOUSE_PASSWORD") for name in names]


def test_clickhouse_users_take_passwords_from_env(compose):
    root = clickhouse_users()
    assert root.tag == "clickhouse"
    users = root.find("users")
    assert {u.tag for u in users} == CLICKHOUSE_USERS
    (server_env_file, _), = env_files_of(services(compose)["clickhouse"])
    server_env = read_env_file(example_of(server_env_file))
    server_vars = set()
    for user in users:
        passwords = [e for e in user if e.tag.startswith("password") or e.tag == "no_password"]
        assert len(passwords) == 1 and passwords[0].tag == "password", f"{user.tag}: exactly one <password>"
        pw = passwords[0]
        var = pw.get("from_env")
        assert var and not (pw.text or "").strip(), f"{user.tag}: password must come from_env"
        assert var in server_env, f"{var} missing from {example_of(server_env_file).name}"
        assert not var.startswith("CEM_"), f"{var}: the server's name for it, not a worker setting"
        server_vars.add(var)
        # The client holds the same password under its own name in its own env file (same placeholder).
        for service, client_var in compose_clients_of(compose, user.tag):
            (client_file, _), = env_files_of(services(compose)[service])
            client_env = read_env_file(example_of(client_file))
            assert client_var in client_env, f"{user.tag}: {client_var} missing from {example_of(client_file).name}"
            assert client_env[client_var] == server_env[var], f"{user.tag}: {client_var} and {var} are one password"
    assert len(server_vars) == len(users), "one variable per user"
    assert {"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"} <= set(server_env), "the bootstrap admin replaces `default`"
    assert server_env["CLICKHOUSE_USER"] not in CLICKHOUSE_USERS | {"default"}


def grants(user: str) -> list[str]:
    return [" ".join(q.text.split()) for q in clickhouse_users().findall(f"users/{user}/grants/query")]


def grant_map(user: str) -> dict[str, set[str]]:
    """``GRANT a, b ON db.t`` queries of a user -> {"db.t": {"a", "b"}}."""
    out: dict[str, set[str]] = {}
    for query in grants(user):
        m = re.fullmatch(r"GRANT (.+) ON (\S+)", query)
        assert m, f"{user}: unexpected grant {query!r}"
        out.setdefault(m.group(2), set()).update(p.strip() for p in m.group(1).split(","))
    return out


def test_clickhouse_grants_are_least_privilege():
    # Workers: read and append; for GDPR erasure only, ALTER UPDATE / DELETE on exactly four tables. No DDL.
    writer = grant_map("cem_writer")
    assert writer == {"cem.*": {"SELECT", "INSERT"}, **{f"cem.{t}": ERASURE_PRIVILEGES for t in ERASURE_TABLES}}, writer
    # Migration: the DDL minimum; nothing that removes or rewrites data, no access management.
    assert grant_map("cem_migrate") == MIGRATE_GRANTS
    assert grants("grafana") == ["GRANT SELECT ON cem.*"]
    for user in CLICKHOUSE_USERS:
        for obj, privileges in grant_map(user).items():
            assert obj.startswith("cem."), f"{user}: grant outside the cem database: {obj}"
            assert "ALL" not in privileges and "ALTER" not in privileges and "CREATE" not in privileges, user
            assert not {p for p in privileges if p.startswith(("DROP", "TRUNCATE"))}, user
        assert "WITH GRANT OPTION" not in " ".join(grants(user))
    root = clickhouse_users()
    profile = root.find("users/grafana/profile").text
    assert root.find(f"profiles/{profile}/readonly").text == "1"
    assert root.find(f"profiles/{profile}/constraints/max_execution_time/changeable_in_readonly") is not None
    for user in CLICKHOUSE_USERS:
        assert root.find(f"users/{user}/access_management") is None
        assert root.find(f"profiles/{root.find(f'users/{user}/profile').text}") is not None
    assert len({root.find(f"users/{u}/profile").text for u in CLICKHOUSE_USERS}) == 3, "one profile per user"


def test_clickhouse_table_grants_name_the_workers_tables():
    ddl_module = pytest.importorskip("sinks.clickhouse_ddl")
    created = {m for stmt in ddl_module.statements("cem")
               for m in re.findall(r"CREATE TABLE IF NOT EXISTS cem\.(\w+)", stmt)}
    assert created >= ERASURE_TABLES, f"erasure grants name tables the DDL does not create: {ERASURE_TABLES - created}"
    for user in CLICKHOUSE_USERS:
        tables = {obj.removeprefix("cem.") for obj in grant_map(user) if obj != "cem.*"}
        assert tables <= created, f"{user}: grants on tables the DDL does not create: {sorted(tables - created)}"
    # Every table that holds a customer id or a raw payload can be erased by the workers, and only those.
    personal = set()
    for stmt in ddl_module.statements("cem"):
        m = re.match(r"CREATE TABLE IF NOT EXISTS cem\.(\w+)", stmt)
        if m and re.search(r"\b(customer_id|payload)\b", stmt):
            personal.add(m.group(1))
    personal.discard("erasure_audit")  # the record of who was erased: kept, written by the workers (INSERT)
    assert personal == ERASURE_TABLES, f"tables with personal data {sorted(personal)}"
    erasable = {obj.removeprefix("cem.") for obj, p in grant_map("cem_writer").items() if obj != "cem.*"}
    assert erasable == personal and all(grant_map("cem_writer")[f"cem.{t}"] == ERASURE_PRIVILEGES for t in erasable)


def user_networks(user: str) -> dict[str, list[str]]:
    nets = clickhouse_users().find(f"users/{user}/networks")
    assert nets is not None, f"{user}: no <networks>: ClickHouse would allow any address"
    out: dict[str, list[str]] = {}
    for element in nets:
        out.setdefault(element.tag, []).append((element.text or "").strip())
    return out


def test_clickhouse_users_accept_only_the_deployment_network(compose):
    subnet = compose_subnet(compose)
    allowed = {str(subnet), "127.0.0.1", "::1"}
    for user in CLICKHOUSE_USERS:
        nets = user_networks(user)
        assert set(nets) == {"ip"}, f"{user}: only <ip> entries (no host / host_regexp): {sorted(nets)}"
        assert set(nets["ip"]) == allowed, f"{user}: networks {nets['ip']}, expected {sorted(allowed)}"
        for ip in nets["ip"]:
            net = ipaddress.ip_network(ip)
            assert net.is_private or net.is_loopback, f"{user}: {ip} is not a private network"
            assert net.num_addresses <= 2 ** 20, f"{user}: {ip} is too wide"
    # How to change the subnet is documented next to both settings.
    assert str(subnet) in COMPOSE_FILE.read_text().split("services:")[0], "compose header explains the subnet"
    assert "docker-compose.yml" in (CLICKHOUSE / "users.d" / "cem-users.xml").read_text()


CHDB_PRIVILEGES_SCRIPT = r"""
import json
from chdb import session
s = session.Session()
rows = s.query("SELECT privilege, aliases, level, parent_group FROM system.privileges", "JSONCompact")
print(json.dumps(json.loads(str(rows))["data"]))
"""


@pytest.fixture(scope="module")
def privilege_catalog() -> dict[str, dict]:
    """ClickHouse's own privilege catalog (system.privileges, via chDB): name -> level, parent, children."""
    pytest.importorskip("chdb")
    proc = subprocess.run([sys.executable, "-c", CHDB_PRIVILEGES_SCRIPT], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    catalog = {name: {"aliases": aliases, "level": level, "parent": parent, "children": set()}
               for name, aliases, level, parent in json.loads(proc.stdout.strip().splitlines()[-1])}
    for name, row in catalog.items():
        if row["parent"] in catalog:
            catalog[row["parent"]]["children"].add(name)
    return catalog


def effective_privileges(catalog: dict[str, dict], granted: set[str]) -> set[str]:
    """Granted privileges with everything they imply (a group grants all its descendants)."""
    alias = {a: name for name, row in catalog.items() for a in row["aliases"]}
    out, todo = set(), [alias.get(p, p) for p in granted]
    while todo:
        p = todo.pop()
        assert p in catalog, f"not a ClickHouse privilege: {p!r}"
        if p not in out:
            out.add(p)
            todo.extend(catalog[p]["children"])
    return out


def descendants(catalog: dict[str, dict], group: str) -> set[str]:
    return effective_privileges(catalog, {group})


@pytest.mark.integration
def test_clickhouse_grants_against_the_privilege_catalog(privilege_catalog):
    """The grants, expanded by ClickHouse's privilege hierarchy: what each user can really do."""
    cat = privilege_catalog
    table_levels, db_levels = {"TABLE", "VIEW", "COLUMN", "DICTIONARY", None}, {"DATABASE", "TABLE", "VIEW", "COLUMN", "DICTIONARY", None}
    alias = {a: name for name, row in cat.items() for a in row["aliases"]}
    for user in CLICKHOUSE_USERS:
        for obj, privileges in grant_map(user).items():
            for p in privileges:  # as granted (a group grants what applies at the object's level)
                p = alias.get(p, p)
                assert p in cat, f"{user}: {p!r} is not a ClickHouse privilege"
                levels = db_levels if obj.endswith(".*") else table_levels
                assert cat[p]["level"] in levels, f"{user}: {p} (level {cat[p]['level']}) cannot be granted on {obj}"
    ddl = descendants(cat, "CREATE") | descendants(cat, "DROP") | descendants(cat, "ALTER") | {"TRUNCATE", "OPTIMIZE"}
    access = descendants(cat, "ACCESS MANAGEMENT")
    writer = {obj: effective_privileges(cat, p) for obj, p in grant_map("cem_writer").items()}
    assert writer["cem.*"] == {"SELECT", "INSERT"}
    for obj, privileges in writer.items():
        assert not (privileges & ddl) - ERASURE_PRIVILEGES, f"cem_writer can change the schema on {obj}"
        assert not privileges & access
    migrate_grants = grant_map("cem_migrate")
    migrate = effective_privileges(cat, migrate_grants["cem.*"])
    needed = {"CREATE DATABASE", "CREATE TABLE", "CREATE VIEW", "ALTER ADD COLUMN", "ALTER ADD PROJECTION", "SELECT"}
    assert needed <= migrate, f"cem_migrate cannot run the DDL: lacks {needed - migrate}"
    destructive = descendants(cat, "DROP") | {"TRUNCATE", "INSERT", "ALTER UPDATE", "ALTER DELETE", "ALTER DROP COLUMN",
                                              "ALTER MODIFY COLUMN", "ALTER DROP PROJECTION", "ALTER CLEAR COLUMN"}
    assert not migrate & destructive, f"cem_migrate may destroy data: {sorted(migrate & destructive)}"
    assert not migrate & access
    # Besides, only recording the applied layout.
    assert {obj: effective_privileges(cat, p) for obj, p in migrate_grants.items() if obj != "cem.*"} == \
        {"cem.schema_version": {"INSERT"}}
    assert effective_privileges(cat, grant_map("grafana")["cem.*"]) == {"SELECT"}
    # The detector itself: the old writer grant (ALTER, CREATE TABLE, ...) would fail.
    assert {"ALTER ADD COLUMN", "ALTER DROP COLUMN"} <= effective_privileges(cat, {"ALTER"}) & ddl


def init_sql_statements() -> list[str]:
    sql = (CLICKHOUSE / "init.sql").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [" ".join(stmt.split()) for stmt in code.split(";") if stmt.strip()]


def test_clickhouse_init_sql(compose):
    sql = (CLICKHOUSE / "init.sql").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    assert len(init_sql_statements()) == 2
    # init.sql reads system.users: the bootstrap admin needs access management (SHOW USERS).
    assert env_of(services(compose)["clickhouse"])["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "1"
    assert re.search(r"CREATE DATABASE IF NOT EXISTS cem\s*;", code)
    assert not re.search(r"(?i)IDENTIFIED|PASSWORD\s*=|BY\s+'", code), "no passwords in init.sql"
    # The sanity check counts exactly the users of users.d/cem-users.xml.
    check = init_sql_statements()[1]
    m = re.search(r"count\(\) != (\d+).*WHERE name IN \(([^)]*)\)", check)
    assert m, check
    listed = set(re.findall(r"'(\w+)'", m.group(2)))
    assert listed == CLICKHOUSE_USERS and int(m.group(1)) == len(CLICKHOUSE_USERS), "init.sql checks every user"
    comments = "\n".join(line.split("--", 1)[1] for line in sql.splitlines() if "--" in line)
    assert all(user in comments for user in CLICKHOUSE_USERS), "init.sql documents every user"
    assert "deploy/cem.env" not in sql


# ---------------------------------------------------------------------------------------------------------
# PromQL helpers
# ---------------------------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
    "atan2", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio", "inf", "nan", "start", "end",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (identifiers that are not functions, keywords or labels).

    >>> sorted(promql_metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) / on () group_left () b:c offset 1h'))
    ['a_bucket', 'b:c']
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        word = m.group(0)
        after = s[m.end():].lstrip()
        if after.startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def substitute_promql_vars(expr: str, rate_interval: str = "1m", interval: str = "1m", range_: str = "1h") -> str:
    """Replace Grafana's built-in PromQL variables with fixed durations."""
    out = expr
    for name, value in (("__rate_interval", rate_interval), ("__interval", interval), ("__range", range_)):
        out = out.replace("${%s}" % name, value).replace(f"${name}", value)
    return out


def rule_file() -> dict:
    return load_yaml(RULES_FILE)


def all_rules() -> list[dict]:
    return [r for g in rule_file()["groups"] for r in g["rules"]]


def recording_rule_names() -> set[str]:
    return {r["record"] for r in all_rules() if "record" in r}


def alerting_rules() -> list[dict]:
    return [r for r in all_rules() if "alert" in r]


# ---------------------------------------------------------------------------------------------------------
# Grafana helpers
# ---------------------------------------------------------------------------------------------------------

def load_dashboard(name: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / name).read_text())


def iter_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def grafana_targets() -> list[dict]:
    """Every query of every dashboard: dashboard, panel title, kind ("promql" | "sql"), expr, datasource uid."""
    out = []
    for name in DASHBOARDS:
        dash = load_dashboard(name)
        for panel in iter_panels(dash["panels"]):
            for target in panel.get("targets") or []:
                ds = target.get("datasource") or panel.get("datasource") or {}
                if ds.get("type") == "prometheus":
                    kind, expr = "promql", target.get("expr")
                elif ds.get("type") == "grafana-clickhouse-datasource":
                    kind, expr = "sql", target.get("rawSql")
                else:
                    raise AssertionError(f"{name} / {panel.get('title')}: unknown datasource {ds}")
                out.append({"dashboard": name, "panel": panel.get("title"), "kind": kind, "expr": expr,
                            "uid": ds.get("uid"), "target": target})
    return out


def grafana_queries() -> list[tuple[str, str]]:
    """(kind, expr) for every dashboard query: kind "promql" (Grafana variables left in, see
    substitute_promql_vars) or "sql" (plugin macros left in, see substitute_macros)."""
    return [(t["kind"], t["expr"]) for t in grafana_targets()]


def _macro_calls(sql: str, name: str):
    """(start, end, [args]) of each ``$__name(...)`` call, with balanced parentheses."""
    pattern = re.compile(r"\$__" + re.escape(name) + r"\s*\(")
    pos = 0
    while m := pattern.search(sql, pos):
        depth, i, args, cur = 1, m.end(), [], ""
        while depth:
            if i >= len(sql):
                raise ValueError(f"unbalanced $__{name}( in {sql!r}")
            ch = sql[i]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if not depth:
                    break
            if ch == "," and depth == 1:
                args.append(cur.strip())
                cur = ""
            else:
                cur += ch
            i += 1
        args.append(cur.strip())
        yield m.start(), i + 1, [a for a in args if a]
        pos = i + 1


def substitute_macros(sql: str, start: float | None = None, end: float | None = None, interval_s: int = 60) -> str:
    """Expand the grafana-clickhouse-datasource macros (pkg/macros/macros.go, plugin 4.x) as the plugin does,
    for a time range [start, end] in epoch seconds (default: the last day) and a query interval.

    >>> substitute_macros("SELECT $__timeInterval(minute) AS t FROM x WHERE $__timeFilter(minute)", 0, 86400)
    'SELECT toStartOfInterval(toDateTime(minute), INTERVAL 60 second) AS t FROM x WHERE minute >= toDateTime(0) AND minute <= toDateTime(86400)'
    """
    end = int(time.time()) if end is None else int(end)
    start = end - 86400 if start is None else int(start)
    from_dt, to_dt = f"toDateTime({start})", f"toDateTime({end})"
    from_ms, to_ms = f"fromUnixTimestamp64Milli({start * 1000})", f"fromUnixTimestamp64Milli({end * 1000})"
    from_d = "toDate('%s')" % time.strftime("%Y-%m-%d", time.gmtime(start))
    to_d = "toDate('%s')" % time.strftime("%Y-%m-%d", time.gmtime(end))
    interval_s = max(int(interval_s), 1)
    expanders = {
        "timeFilter_ms": lambda a: f"{a[0]} >= {from_ms} AND {a[0]} <= {to_ms}",
        "timeFilter": lambda a: f"{a[0]} >= {from_dt} AND {a[0]} <= {to_dt}",
        "dateTimeFilter": lambda a: f"({a[0]} >= {from_d} AND {a[0]} <= {to_d}) AND ({a[1]} >= {from_dt} AND {a[1]} <= {to_dt})",
        "dt": lambda a: f"({a[0]} >= {from_d} AND {a[0]} <= {to_d}) AND ({a[1]} >= {from_dt} AND {a[1]} <= {to_dt})",
        "dateFilter": lambda a: f"{a[0]} >= {from_d} AND {a[0]} <= {to_d}",
        "timeInterval_ms": lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {interval_s * 1000} millisecond)",
        "timeInterval": lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {interval_s} second)",
    }
    for name, expand in expanders.items():  # longest names first: timeFilter_ms before timeFilter
        while True:
            calls = list(_macro_calls(sql, name))
            if not calls:
                break
            s, e, args = calls[0]
            sql = sql[:s] + expand(args) + sql[e:]
    for name, value in (("fromTime_ms", from_ms), ("toTime_ms", to_ms), ("fromTime", from_dt), ("toTime", to_dt),
                        ("interval_s", str(interval_s))):
        sql = re.sub(r"\$__" + name + r"\b", value, sql)
    return sql


def test_substitute_macros():
    sql = "SELECT $__timeInterval(toDateTime(a, 'UTC')) t FROM x WHERE $__timeFilter_ms(b) AND $__timeFilter(c) " \
          "AND $__dateFilter(d) AND e BETWEEN $__fromTime AND $__toTime AND $__interval_s > 0 AND $__dt(d, c)"
    out = substitute_macros(sql, 0, 3600, 30)
    assert "$" not in out
    assert "toStartOfInterval(toDateTime(toDateTime(a, 'UTC')), INTERVAL 30 second)" in out
    assert "b >= fromUnixTimestamp64Milli(0) AND b <= fromUnixTimestamp64Milli(3600000)" in out
    assert "e BETWEEN toDateTime(0) AND toDateTime(3600)" in out
    assert "d >= toDate('1970-01-01') AND d <= toDate('1970-01-01')" in out


# ---------------------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------------------

def test_promtool_check_config():
    promtool = required_binary("promtool", "prometheus")
    proc = subprocess.run([promtool, "check", "config", str(PROM_CONFIG)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules():
    promtool = required_binary("promtool", "prometheus")
    proc = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_workers(compose):
    config = load_yaml(PROM_CONFIG)
    assert [str((PROM_CONFIG.parent / f).resolve()) for f in config["rule_files"]] == [str(RULES_FILE.resolve())]
    for name in CEM_PROCESSES:  # the workers and the trainer alike
        job = next(j for j in config["scrape_configs"] if j["job_name"] == f"cem-{name}")
        assert job.get("metrics_path", "/metrics") == "/metrics"
        sd = job["dns_sd_configs"][0]
        assert sd["names"] == [name] and name in services(compose) and sd["port"] == METRICS_PORT
        assert int(env_of(services(compose)[name])["CEM_METRICS_PORT"]) == METRICS_PORT
    # the rules and dashboards select the workers by this job name
    assert 'job="cem-worker"' in RULES_FILE.read_text()


def test_recording_rules_are_unique_and_namespaced():
    names = [r["record"] for r in all_rules() if "record" in r]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"cem:[a-z0-9_]+:[a-z0-9_]+", name), f"recording rule {name} is not level:metric:operation"


ALERT_SEVERITIES = {"critical", "warning", "info"}


def runbook_headings() -> list[tuple[int, str, int]]:
    """(level, title, line index) of the runbook's headings, outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(RUNBOOK.read_text().splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append((len(line) - len(line.lstrip("#")), line.lstrip("#").strip(), i))
    return out


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {anchor(title) for _, title, _ in runbook_headings()}


def runbook_section(title: str) -> str:
    """The text of a runbook section, up to the next heading of the same or a higher level."""
    lines = RUNBOOK.read_text().splitlines()
    heads = runbook_headings()
    for n, (level, t, i) in enumerate(heads):
        if t == title:
            end = next((j for lv, _, j in heads[n + 1:] if lv <= level), len(lines))
            return "\n".join(lines[i + 1:end])
    raise AssertionError(f"runbook has no section {title!r}")


def test_alerts_have_severity_annotations_and_runbook():
    alerts = alerting_rules()
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    anchors = runbook_anchors()
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("labels", {}).get("severity") in ALERT_SEVERITIES, f"{name}: severity label"
        ann = alert.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert ann.get(key, "").strip(), f"{name}: missing annotation {key}"
        assert "Hint:" in ann["description"], f"{name}: description should end with a first step (Hint: ...)"
        path, _, fragment = ann["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == RUNBOOK.resolve() and fragment in anchors, f"{name}: runbook_url {ann['runbook_url']}"
    # and the other way round: every alert section (before "# Operations") is some alert's runbook_url
    heads = runbook_headings()
    operations = next(i for level, title, i in heads if level == 1 and title == "Operations")
    sections = {anchor(title) for level, title, i in heads if level == 2 and i < operations}
    assert sections == {a["annotations"]["runbook_url"].partition("#")[2] for a in alerts}


RUNBOOK_PROCEDURES = ("Secrets", "Rotating the web token", "Rotating the ClickHouse passwords", "Schema migrations",
                      "Kafka SASL and TLS", "Dead-letter topic: access and retention")


def test_runbook_operational_procedures(compose):
    for title in RUNBOOK_PROCEDURES:
        assert runbook_section(title).strip(), title
    secrets = runbook_section("Secrets")
    for path, _ in [e for svc in services(compose).values() for e in env_files_of(svc)]:
        assert str(path.relative_to(ROOT)) in secrets or path.name in secrets, f"Secrets: {path.name} not described"
    web = runbook_section("Rotating the web token")
    assert "CEM_WEB_TOKEN" in web and "rollout restart" in web and "--force-recreate" in web
    ch = runbook_section("Rotating the ClickHouse passwords")
    for var in ("CLICKHOUSE_CEM_WRITER_PASSWORD", "CLICKHOUSE_CEM_MIGRATE_PASSWORD", "CLICKHOUSE_GRAFANA_PASSWORD",
                "CLICKHOUSE_PASSWORD", "CEM_CLICKHOUSE_PASSWORD", "reset-admin-password", "ALTER USER"):
        assert var in ch, f"Rotating the ClickHouse passwords: {var}"
    migrations = runbook_section("Schema migrations")
    assert "cem_migrate" in migrations and "CEM_CLICKHOUSE_MIGRATE=false" in migrations
    assert "docker compose run --rm migrate" in migrations and "kubectl apply -k deploy/k8s/migrate" in migrations
    kafka = runbook_section("Kafka SASL and TLS")
    for name in ("CEM_KAFKA_SECURITY_PROTOCOL", "CEM_KAFKA_SASL_MECHANISM", "CEM_KAFKA_SASL_USERNAME",
                 "CEM_KAFKA_SASL_PASSWORD", "CEM_KAFKA_SSL_CAFILE", "KAFKA_COMMAND_CONFIG", "cem-kafka-ca"):
        assert name in kafka, f"Kafka SASL and TLS: {name}"
    # The trainer connects as the workers' SASL user, in its own consumer group (its Faust app id).
    user = k8s_docs()["configmap.yaml"][0]["data"]["CEM_KAFKA_SASL_USERNAME"]
    group = f"{pytest.importorskip('pipeline.settings').Settings().app_id}-trainer"
    assert f"`{group}`" in kafka, f"Kafka SASL and TLS: the trainer's consumer group {group}"
    grants = [" ".join(c.split()) for c in re.findall(r"kafka-acls\.sh(?:[^\n]*\\\n)*[^\n]*", kafka)]
    grants = [c for c in grants if "--add" in c and f"--allow-principal User:{user} " in c]
    assert any(f"--operation Read --group {group}" in c for c in grants), f"Read on the group {group}"
    for operation, topic in (("Read", "cem.model.training"), ("Read", "cem.models"), ("Write", "cem.models")):
        assert any(f"--operation {operation}" in c and c.endswith(f"--topic {topic}") for c in grants), (operation, topic)
    dlq = runbook_section("Dead-letter topic: access and retention")
    assert "kafka-configs.sh" in dlq and "--entity-name cem.touchpoints.dlq" in dlq
    acls = [" ".join(c.split()) for c in re.findall(r"kafka-acls\.sh(?:[^\n]*\\\n)*[^\n]*", dlq)]
    adds = [c for c in acls if "--add" in c]
    assert adds and all("--topic cem.touchpoints.dlq" in c or "--group" in c for c in adds)
    readers = {re.search(r"--allow-principal (\S+)", c).group(1) for c in adds if "--operation Read" in c}
    writers = {re.search(r"--allow-principal (\S+)", c).group(1) for c in adds if "--operation Write" in c}
    assert readers and writers and not readers & writers, "the workers write the DLQ, only the operators read it"
    assert not any("--topic '*'" in c or '--topic "*"' in c for c in adds), "no wildcard topic ACLs"


def test_alerts_cover_the_failure_modes():
    by_name = {a["alert"]: a for a in alerting_rules()}
    exprs = {name: " ".join(a["expr"].split()) for name, a in by_name.items()}
    recorded = {r["record"]: " ".join(r["expr"].split()) for r in all_rules() if "record" in r}

    def reads(name: str, metric: str) -> bool:
        names = promql_metric_names(exprs[name])
        return metric in names or any(metric in promql_metric_names(recorded.get(n, "")) for n in names)

    assert reads("CemConsumerLagGrowing", "cem_consumer_lag") and "deriv(" in exprs["CemConsumerLagGrowing"]
    assert reads("CemDeadLetterRateHigh", "cem_touchpoints_dead_lettered_total")
    assert reads("CemClickHouseInsertErrors", "cem_clickhouse_insert_errors_total")
    assert "offset" in exprs["CemThroughputDrop"] and reads("CemThroughputDrop", "cem_touchpoints_processed_total")
    assert reads("CemModelQualityDrop", "cem_model_quality") and reads("CemModelDrift", "cem_model_drift_total")
    assert exprs["CemWorkerDown"].startswith("up{") and "absent(" in exprs["CemNoHealthyWorkers"]
    # The trainer: its target down, no target at all, not live, and no snapshot while training records arrive.
    assert exprs["CemTrainerDown"] == 'up{job="cem-trainer"} == 0'
    assert exprs["CemNoTrainer"] == 'absent(up{job="cem-trainer"})'
    assert exprs["CemTrainerNotLive"] == 'cem_worker_live{job="cem-trainer"} == 0'
    assert reads("CemModelsStale", "cem_kafka_produced_total")
    assert 'topic="cem.models"' in exprs["CemModelsStale"] and 'topic="cem.model.training"' in exprs["CemModelsStale"]
    # Multiwindow burn rate on the committed-latency SLO: both a long and a short window per condition.
    for name, windows in (("CemLatencySLOBurnFast", {"1h", "5m", "6h", "30m"}),
                          ("CemLatencySLOBurnSlow", {"1d", "2h", "3d", "6h"})):
        used = set(re.findall(r"cem:latency_slo_errors:ratio_rate(\w+)", exprs[name]))
        assert used == windows, (name, used)
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        expr = recorded[f"cem:latency_slo_errors:ratio_rate{window}"]
        assert 'stage="committed"' in expr and 'le=~"5|5.0"' in expr and f"[{window}]" in expr


# Series that the workers and the trainer both export (cem_worker_* gauges, the lag, up): told apart by job only.
SHARED_SERIES = {"up", "cem_worker_live", "cem_worker_stalled_seconds", "cem_worker_last_batch_timestamp_seconds",
                 "cem_worker_last_commit_timestamp_seconds", "cem_consumer_lag"}


def test_worker_and_trainer_alerts_select_their_job():
    """An alert about the workers (CemWorker*, CemNoHealthyWorkers) or the trainer (CemTrainer*, CemNoTrainer)
    reads the shared series of its own job only, and no recording rule (they sum the jobs together): a trainer
    that is not live must not fire CemWorkerNotLive, its lag must not make CemWorkerStalled fire."""
    selector = re.compile(r"\b(%s)\b(\{[^}]*\})?" % "|".join(sorted(SHARED_SERIES, key=len, reverse=True)))
    kinds = {"worker": re.compile(r"CemWorker|CemNoHealthyWorkers"), "trainer": re.compile(r"CemTrainer|CemNoTrainer")}
    seen = set()
    for alert in alerting_rules():
        name, expr = alert["alert"], " ".join(alert["expr"].split())
        kind = next((k for k, pattern in kinds.items() if pattern.match(name)), None)
        if kind is None:
            continue
        seen.add(kind)
        assert not promql_metric_names(expr) & recording_rule_names(), f"{name}: a recording rule mixes the jobs"
        for metric, labels in selector.findall(expr):
            matchers = set(re.findall(r'job\s*(!?=)\s*"([^"]*)"', labels or ""))
            if kind == "trainer":
                assert matchers == {("=", "cem-trainer")}, f"{name}: {metric}{labels} must select job=\"cem-trainer\""
            else:
                assert matchers in ({("=", "cem-worker")}, {("!=", "cem-trainer")}), f"{name}: {metric}{labels} reads the trainer"
    assert seen == set(kinds)


def test_rule_metric_names_are_known():
    known = EXPOSED | recording_rule_names() | BUILTIN_SERIES
    for rule in all_rules():
        unknown = promql_metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown metrics {sorted(unknown)}"


def strip_annotations(rules: dict) -> dict:
    return {"groups": [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                       for g in rules["groups"]]}


def w(instance: str = "w1:9108") -> str:
    return f'job="cem-worker",instance="{instance}"'


# promtool unit tests of the alerts. Annotations are stripped from the rules under test (promtool compares
# them verbatim; their templates are checked by `promtool check rules`), labels are compared exactly.
PROMTOOL_TESTS = [
    {  # one replica down
        "interval": "1m",
        "input_series": [
            {"series": f"up{{{w('w1:9108')}}}", "values": "1 1 1 0x10"},
            {"series": f"up{{{w('w2:9108')}}}", "values": "1x13"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "CemWorkerDown", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "CemWorkerDown",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "cem-worker", "instance": "w1:9108"}}]},
            {"eval_time": "6m", "alertname": "CemNoHealthyWorkers", "exp_alerts": []},
        ],
    },
    {  # the trainer's target down; the workers up
        "interval": "1m",
        "input_series": [
            {"series": 'up{job="cem-trainer",instance="t1:9108"}', "values": "1 1 0x10"},
            {"series": f"up{{{w()}}}", "values": "1x12"},
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "CemTrainerDown", "exp_alerts": []},
            {"eval_time": "8m", "alertname": "CemTrainerDown",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "cem-trainer", "instance": "t1:9108"}}]},
            {"eval_time": "8m", "alertname": "CemNoTrainer", "exp_alerts": []},
            {"eval_time": "8m", "alertname": "CemWorkerDown", "exp_alerts": []},
            {"eval_time": "8m", "alertname": "CemNoHealthyWorkers", "exp_alerts": []},
        ],
    },
    {  # no trainer target at all (not deployed); the workers up
        "interval": "1m",
        "input_series": [{"series": f"up{{{w()}}}", "values": "1x10"}],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "CemNoTrainer", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "CemNoTrainer",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "cem-trainer"}}]},
            {"eval_time": "6m", "alertname": "CemTrainerDown", "exp_alerts": []},
        ],
    },
    {  # the trainer is not live: its own alert, not the workers'; a worker that is not live: the workers'
        "interval": "1m",
        "input_series": [
            {"series": 'cem_worker_live{job="cem-trainer",instance="t1:9108"}', "values": "1 1 0x5"},
            {"series": 'cem_worker_stalled_seconds{job="cem-trainer",instance="t1:9108"}', "values": "0 0 190x5"},
            {"series": f"cem_worker_live{{{w('w1:9108')}}}", "values": "1x7"},
            {"series": f"cem_worker_live{{{w('w2:9108')}}}", "values": "1 1 1 1 1 0 0 0"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "CemTrainerNotLive",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "cem-trainer", "instance": "t1:9108"}}]},
            {"eval_time": "5m", "alertname": "CemWorkerNotLive", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "CemWorkerNotLive",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "cem-worker", "instance": "w2:9108"}}]},
        ],
    },
    {  # the workers are idle (no input) while the trainer lags on cem.model.training: not CemWorkerStalled
        "interval": "1m",
        "input_series": [
            {"series": 'cem_consumer_lag{topic="cem.model.training",partition="0",job="cem-trainer",instance="t1:9108"}',
             "values": "100x20"},
            {"series": 'cem_worker_last_batch_timestamp_seconds{job="cem-trainer",instance="t1:9108"}', "values": "0x20"},
            {"series": f"cem_worker_last_batch_timestamp_seconds{{{w()}}}", "values": "0x20"},
            {"series": f'cem_consumer_lag{{topic="cem.touchpoints",partition="3",{w()}}}', "values": "0x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "CemWorkerStalled", "exp_alerts": []},
        ],
    },
    {  # training records keep coming; the trainer publishes for 20 minutes, then stops
        "interval": "1m",
        "input_series": [
            {"series": f'cem_kafka_produced_total{{topic="cem.model.training",{w()}}}', "values": "0+10x60"},
            {"series": f'cem_kafka_produced_total{{topic="cem.models",{w()}}}', "values": "0+1x60"},  # alert engines
            {"series": 'cem_kafka_produced_total{topic="cem.models",job="cem-trainer",instance="t1:9108"}',
             "values": "0+24x20 480x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "CemModelsStale", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "CemModelsStale", "exp_alerts": []},
            {"eval_time": "50m", "alertname": "CemModelsStale", "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        ],
    },
    {  # no training records (quiet input): an idle trainer publishes nothing, and that is fine
        "interval": "1m",
        "input_series": [
            {"series": f'cem_kafka_produced_total{{topic="cem.model.training",{w()}}}', "values": "100x60"},
            {"series": 'cem_kafka_produced_total{topic="cem.models",job="cem-trainer",instance="t1:9108"}', "values": "480x60"},
        ],
        "alert_rule_test": [
            {"eval_time": "50m", "alertname": "CemModelsStale", "exp_alerts": []},
        ],
    },
    {  # every replica down, and no target at all
        "interval": "1m",
        "input_series": [{"series": f"up{{{w()}}}", "values": "0x10"}],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "CemNoHealthyWorkers", "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
        ],
    },
    {  # 5% dead letters
        "interval": "1m",
        "input_series": [
            {"series": f'cem_touchpoints_received_total{{channel="web",{w()}}}', "values": "0+100x30"},
            {"series": f'cem_touchpoints_processed_total{{channel="web",{w()}}}', "values": "0+95x30"},
            {"series": f'cem_touchpoints_dead_lettered_total{{reason="schema",stage="decode",{w()}}}', "values": "0+5x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "CemDeadLetterRateHigh", "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
            {"eval_time": "20m", "alertname": "CemDeadLetterRateCritical", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "CemNothingProcessed", "exp_alerts": []},
        ],
    },
    {  # records arrive, nothing is processed
        "interval": "1m",
        "input_series": [
            {"series": f'cem_touchpoints_received_total{{channel="web",{w()}}}', "values": "0+100x20"},
            {"series": f'cem_touchpoints_processed_total{{channel="web",{w()}}}', "values": "0x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "CemNothingProcessed", "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
        ],
    },
    {  # 20% of touchpoints over 5 s: fast burn. Prometheus 2 bucket label "5.0"; the enriched stage is ignored.
        "interval": "1m",
        "input_series": [
            {"series": f'cem_processing_latency_seconds_bucket{{stage="committed",le="5.0",{w()}}}', "values": "0+80x90"},
            {"series": f'cem_processing_latency_seconds_bucket{{stage="committed",le="+Inf",{w()}}}', "values": "0+100x90"},
            {"series": f'cem_processing_latency_seconds_count{{stage="committed",{w()}}}', "values": "0+100x90"},
            {"series": f'cem_processing_latency_seconds_bucket{{stage="enriched",le="5.0",{w()}}}', "values": "0+100x90"},
            {"series": f'cem_processing_latency_seconds_count{{stage="enriched",{w()}}}', "values": "0+100x90"},
        ],
        "alert_rule_test": [
            {"eval_time": "70m", "alertname": "CemLatencySLOBurnFast",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "slo": "committed-latency-5s"}}]},
        ],
        "promql_expr_test": [
            {"expr": "round(cem:latency_slo_errors:ratio_rate5m, 0.001)", "eval_time": "70m",
             "exp_samples": [{"labels": "{}", "value": 0.2}]},
        ],
    },
    {  # same with Prometheus 3's normalised bucket label "5"; and 0.5% slow is within the SLO
        "interval": "1m",
        "input_series": [
            {"series": f'cem_processing_latency_seconds_bucket{{stage="committed",le="5",{w("w1:9108")}}}', "values": "0+80x90"},
            {"series": f'cem_processing_latency_seconds_count{{stage="committed",{w("w1:9108")}}}', "values": "0+100x90"},
        ],
        "alert_rule_test": [
            {"eval_time": "70m", "alertname": "CemLatencySLOBurnFast",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "slo": "committed-latency-5s"}}]},
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": f'cem_processing_latency_seconds_bucket{{stage="committed",le="5.0",{w()}}}', "values": "0+99.5x90"},
            {"series": f'cem_processing_latency_seconds_count{{stage="committed",{w()}}}', "values": "0+100x90"},
        ],
        "alert_rule_test": [
            {"eval_time": "70m", "alertname": "CemLatencySLOBurnFast", "exp_alerts": []},
            {"eval_time": "70m", "alertname": "CemLatencySLOBurnSlow", "exp_alerts": []},
        ],
    },
    {  # one table's inserts all fail, another's partly
        "interval": "1m",
        "input_series": [
            {"series": f'cem_clickhouse_insert_errors_total{{table="touchpoints_enriched",{w()}}}', "values": "0+2x20"},
            {"series": f'cem_clickhouse_insert_batches_total{{table="touchpoints_enriched",{w()}}}', "values": "0x20"},
            {"series": f'cem_clickhouse_insert_errors_total{{table="dead_letters",{w()}}}', "values": "0+1x20"},
            {"series": f'cem_clickhouse_insert_batches_total{{table="dead_letters",{w()}}}', "values": "0+10x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "CemClickHouseSinkStuck",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "table": "touchpoints_enriched"}}]},
            {"eval_time": "15m", "alertname": "CemClickHouseInsertErrors", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "table": "dead_letters"}},
                {"exp_labels": {"severity": "warning", "table": "touchpoints_enriched"}}]},
        ],
    },
    {  # lag grows steadily while processing goes on; a stale gauge on w2 for the same partition is not counted
        "interval": "1m",
        "input_series": [
            {"series": f'cem_consumer_lag{{topic="cem.touchpoints",partition="0",{w("w1:9108")}}}', "values": "0+500x60"},
            {"series": f'cem_consumer_lag{{topic="cem.touchpoints",partition="0",{w("w2:9108")}}}', "values": "100x60"},
            {"series": f'cem_touchpoints_processed_total{{channel="web",{w()}}}', "values": "0+600x60"},
            {"series": f"cem_worker_last_batch_timestamp_seconds{{{w()}}}", "values": "0+60x60"},
        ],
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": "CemConsumerLagGrowing",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "topic": "cem.touchpoints"}}]},
            {"eval_time": "40m", "alertname": "CemConsumerLagCritical",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "topic": "cem.touchpoints"}}]},
            {"eval_time": "40m", "alertname": "CemWorkerStalled", "exp_alerts": []},
        ],
        "promql_expr_test": [
            {"expr": "cem:consumer_lag:sum", "eval_time": "40m",
             "exp_samples": [{"labels": 'cem:consumer_lag:sum{topic="cem.touchpoints"}', "value": 20000}]},
        ],
    },
    {  # records wait, no batch for a long time
        "interval": "1m",
        "input_series": [
            {"series": f'cem_consumer_lag{{topic="cem.touchpoints",partition="3",{w()}}}', "values": "100x20"},
            {"series": f"cem_worker_last_batch_timestamp_seconds{{{w()}}}", "values": "0x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "12m", "alertname": "CemWorkerStalled", "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
        ],
    },
    {  # throughput falls from 100/s to 10/s
        "interval": "1m",
        "input_series": [
            {"series": f'cem_touchpoints_processed_total{{channel="web",{w()}}}', "values": "0+6000x70 420600+600x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "65m", "alertname": "CemThroughputDrop", "exp_alerts": []},
            {"eval_time": "100m", "alertname": "CemThroughputDrop", "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        ],
    },
    {  # model quality falls, drift repeats
        "interval": "1m",
        "input_series": [
            {"series": f'cem_model_quality{{model="churn",metric="roc_auc",version="1",{w()}}}', "values": "0.85x30 0.70x60"},
            {"series": f'cem_model_quality{{model="churn",metric="log_loss",version="1",{w()}}}', "values": "0.3x90"},
            {"series": f'cem_model_drift_total{{model="churn",{w()}}}', "values": "0 0 1 2 3 3 3 3 3 3"},
        ],
        "alert_rule_test": [
            {"eval_time": "80m", "alertname": "CemModelQualityDrop",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "model": "churn", "metric": "roc_auc"}}]},
            {"eval_time": "80m", "alertname": "CemModelQualityLow", "exp_alerts": []},
            {"eval_time": "8m", "alertname": "CemModelDrift",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "model": "churn"}}]},
        ],
    },
]


def test_promtool_unit_tests_of_alerts(tmp_path):
    promtool = required_binary("promtool", "prometheus")
    rules = tmp_path / "cem.rules.yml"
    rules.write_text(yaml.safe_dump(strip_annotations(rule_file()), sort_keys=False))
    tests = tmp_path / "cem.rules.test.yml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": PROMTOOL_TESTS},
                                    sort_keys=False))
    proc = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Grafana
# ---------------------------------------------------------------------------------------------------------

def provisioned_datasources() -> dict[str, dict]:
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "cem.yml")["datasources"]
    return {d["uid"]: d for d in sources}


def test_datasource_provisioning(compose):
    sources = provisioned_datasources()
    prom = sources["cem-prometheus"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090" and prom["isDefault"]
    ch = sources["cem-clickhouse"]
    assert ch["type"] == "grafana-clickhouse-datasource"
    assert ch["jsonData"]["host"] == "clickhouse" and "clickhouse" in services(compose)
    assert ch["jsonData"]["protocol"] == "http" and ch["jsonData"]["port"] == 8123
    assert ch["jsonData"]["defaultDatabase"] == "cem"
    assert ch["secureJsonData"]["password"].startswith("$"), "password from the environment, not the file"
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "cem.yml")
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name):
    dash = load_dashboard(name)
    assert dash["title"] == DASHBOARDS[name]
    assert dash["uid"] and len(dash["uid"]) <= 40
    assert 36 <= dash["schemaVersion"] <= 41
    panels = list(iter_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    sources = provisioned_datasources()
    cells = set()
    for panel in panels:
        title = panel.get("title")
        assert title, f"{name}: panel {panel['id']} without title"
        if panel["type"] == "row":
            continue
        assert panel.get("datasource", {}).get("uid") in sources, f"{name} / {title}: datasource"
        targets = panel.get("targets") or []
        assert targets, f"{name} / {title}: no targets"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{name} / {title}: duplicate refIds"
        for target in targets:
            ds = target.get("datasource") or panel["datasource"]
            assert ds == panel["datasource"], f"{name} / {title}: target datasource differs from the panel's"
            assert sources[ds["uid"]]["type"] == ds["type"]
            if ds["type"] == "prometheus":
                assert target.get("expr", "").strip()
            else:
                assert target.get("rawSql", "").strip() and target.get("editorType") == "sql"
                assert target.get("format") in (0, 1)  # 0 time series, 1 table
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{name} / {title}: overlaps another panel"
                cells.add((x, y))


def test_dashboards_cover_the_brief():
    by_dash: dict[str, list[dict]] = {}
    for t in grafana_targets():
        by_dash.setdefault(t["dashboard"], []).append(t)
    health = " ".join(t["expr"] for t in by_dash["pipeline-health.json"])
    for metric in ("cem_touchpoints_processed_total", "cem_consumer_lag", "cem_processing_latency_seconds_bucket",
                   "cem_touchpoints_dead_lettered_total", "cem_clickhouse_insert_batches_total",
                   "cem_clickhouse_insert_errors_total", "cem_consumer_rebalances_total"):
        assert metric in health, f"Pipeline health lacks {metric}"
    cx_sql = " ".join(t["expr"] for t in by_dash["customer-experience.json"] if t["kind"] == "sql")
    cx_prom = " ".join(t["expr"] for t in by_dash["customer-experience.json"] if t["kind"] == "promql")
    for needle in ("promoters", "csat_satisfied", "ces_sum", "sentiment_sum", "churn_risk", "cem.alerts", "revenue",
                   "complaints_opened", "complaints_resolved", "cem.kpi_minute", "cem.customer_state",
                   "cem.journey_funnel", "cem.journey_transitions"):
        assert needle in cx_sql, f"Customer experience lacks {needle}"
    assert "cem_alerts_total" in cx_prom and "cem_churn_risk_bucket" in cx_prom


def test_dashboard_promql_metric_names_are_known():
    known = EXPOSED | recording_rule_names() | BUILTIN_SERIES
    for t in grafana_targets():
        if t["kind"] == "promql":
            unknown = promql_metric_names(substitute_promql_vars(t["expr"])) - known
            assert not unknown, f"{t['dashboard']} / {t['panel']}: unknown metrics {sorted(unknown)}"


def test_dashboard_promql_parses(tmp_path):
    """Every dashboard PromQL, wrapped as a recording rule, passes `promtool check rules` (a PromQL parse)."""
    promtool = required_binary("promtool", "prometheus")
    exprs = [substitute_promql_vars(expr) for kind, expr in grafana_queries() if kind == "promql"]
    assert exprs and all("$" not in e for e in exprs)
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}:check", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def sql_tables(sql: str) -> set[str]:
    return set(re.findall(r"\b(?:FROM|JOIN)\s+cem\.(\w+)", sql, re.I))


def test_dashboard_sql_is_well_formed():
    sqls = [expr for kind, expr in grafana_queries() if kind == "sql"]
    assert sqls
    for sql in sqls:
        expanded = substitute_macros(sql)
        assert "$" not in expanded, f"unexpanded variable in {sql!r}"
        tables = sql_tables(sql)
        assert tables and tables <= CLICKHOUSE_TABLES, (tables, sql)
        assert not re.search(r"(?i)\b(INSERT|ALTER|DROP|TRUNCATE|CREATE|OPTIMIZE)\b", sql), "dashboards only read"
        if tables & {"kpi_minute", "alerts", "dead_letters", "model_metrics", "journey_transitions"}:
            assert "$__timeFilter(" in sql, f"unbounded scan of an event table: {sql!r}"
        # UInt64 columns must not be subtracted unsigned (NPS would wrap around to 1.8e19).
        assert not re.search(r"sum\(promoters\)\s*-\s*sum\(detractors\)", sql)


CHDB_SCRIPT = r"""
import json, sys
from chdb import session
job = json.load(sys.stdin)
s = session.Session()
for stmt in job["parse"]:
    try:
        s.query("SELECT formatQuery({q:String})", "CSV", params={"q": stmt})
    except Exception as exc:
        print(json.dumps({"parse_error": str(exc).splitlines()[0][:500], "statement": stmt}))
        sys.exit(0)
for i, ddl in enumerate(job["ddl"]):
    try:
        s.query(ddl)
    except Exception as exc:
        print(json.dumps({"ddl_error": str(exc).splitlines()[0][:500], "statement": ddl[:300]}))
        sys.exit(0)
failures = []
for sql in job["queries"]:
    try:
        s.query(sql, "JSONCompact")
    except Exception as exc:
        failures.append({"sql": sql, "error": str(exc).splitlines()[0][:500]})
print(json.dumps({"failures": failures}))
"""


@pytest.mark.integration
def test_dashboard_sql_runs_on_chdb():
    """Every dashboard SQL, macros expanded, runs against the worker's own DDL in chDB (empty tables)."""
    pytest.importorskip("chdb")
    ddl_module = pytest.importorskip("sinks.clickhouse_ddl")
    ddl = list(ddl_module.statements("cem"))
    created = {m for stmt in ddl for m in re.findall(r"CREATE TABLE IF NOT EXISTS cem\.(\w+)", stmt)}
    assert {"alerts", "model_metrics"} <= created, f"the worker's DDL creates only {sorted(created)}"
    queries = [substitute_macros(expr) for kind, expr in grafana_queries() if kind == "sql"]
    # init.sql and the users' GRANTs (with a grantee, as ClickHouse completes them) must at least parse.
    parse = [stmt for stmt in init_sql_statements()] + [f"{g} TO someone" for u in sorted(CLICKHOUSE_USERS) for g in grants(u)]
    parse += k8s_readme_sql()
    job = {"ddl": ddl, "queries": queries, "parse": parse}
    proc = subprocess.run([sys.executable, "-c", CHDB_SCRIPT], input=json.dumps(job),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "parse_error" not in result, f"deploy/clickhouse SQL does not parse: {result}"
    assert "ddl_error" not in result, f"the worker's ClickHouse DDL fails in chDB: {result}"
    assert not result["failures"], "\n\n".join(f"{f['error']}\n{f['sql']}" for f in result["failures"])


def test_metric_contract_matches_the_worker():
    """The names used here are the ones pipeline.app.metrics registers (when the worker's code is present)."""
    metrics = pytest.importorskip("pipeline.app.metrics")
    registry = metrics.Metrics().registry
    counters, histograms, gauges = set(), set(), set()
    for family in registry.collect():
        {"counter": counters, "histogram": histograms, "gauge": gauges}[family.type].add(family.name)
    exposed = sample_names(counters, histograms, gauges)
    missing = EXPOSED - exposed
    assert not missing, f"metrics used by rules/dashboards but not registered by the worker: {sorted(missing)}"


# ---------------------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------------------

K8S_TRAINER = K8S / "trainer.yaml"  # the trainer's Deployment and metrics Service


def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: load_yaml_all(p) for p in sorted(K8S.glob("*.yaml"))}


def k8s_by_kind(trainer: bool = False) -> dict[str, dict]:
    """The manifests by kind: the workers' and the shared ones, or (``trainer``) those of trainer.yaml."""
    out = {}
    for name, docs in k8s_docs().items():
        if (name == K8S_TRAINER.name) != trainer:
            continue
        for doc in docs:
            assert doc["kind"] not in out, f"two {doc['kind']} manifests"
            out[doc["kind"]] = doc
    return out


def test_k8s_manifests_parse_with_expected_kinds():
    kinds = k8s_by_kind()
    assert set(kinds) == {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "Kustomization"}
    assert set(k8s_by_kind(trainer=True)) == {"Deployment", "Service"}
    for kind, doc in kinds.items():
        assert doc.get("apiVersion") and doc.get("metadata", {}).get("name") or kind == "Kustomization", kind
    assert (K8S / "README.md").is_file()


def test_k8s_kustomization():
    kust = k8s_by_kind()["Kustomization"]
    resources = kust["resources"]
    for res in resources:
        assert (K8S / res).is_file(), res
    applied = {doc["kind"] for res in resources for doc in load_yaml_all(K8S / res)}
    assert applied == {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert K8S_TRAINER.name in resources, "the trainer is deployed with the workers"
    assert not any("secret" in r for r in resources), "the Secret template must never be applied over the real one"
    assert kust["namespace"] == k8s_by_kind()["Namespace"]["metadata"]["name"]
    assert kust["images"][0]["newTag"] == project_version()


def k8s_secret_template(path: Path) -> tuple[dict, str]:
    (secret,) = [d for d in load_yaml_all(path) if d["kind"] == "Secret"]
    return secret, path.read_text()


def test_k8s_secret_is_a_placeholder_template():
    for path, keys in ((K8S / "secret.template.yaml", {"CEM_CLICKHOUSE_PASSWORD", "CEM_WEB_TOKEN", "CEM_KAFKA_SASL_PASSWORD"}),
                       (K8S_MIGRATE / "secret.template.yaml", {"CEM_CLICKHOUSE_PASSWORD"})):
        secret, text = k8s_secret_template(path)
        assert "TEMPLATE" in text and "placeholder" in text.lower()
        assert "data" not in secret, "use stringData placeholders, not base64 data"
        assert set(secret["stringData"]) == keys, path
        assert all(v == "REPLACE_ME" for v in secret["stringData"].values())
        assert set(secret["stringData"]) <= settings_fields()
        # Optional secrets are documented, commented out, under the same policy as compose's worker.env.
        commented = set(re.findall(r"^\s*#\s*(CEM_[A-Z0-9_]+):", text, re.M))
        assert commented <= settings_fields()
    worker_secret, text = k8s_secret_template(K8S / "secret.template.yaml")
    required, optional = SERVICE_SECRETS["worker"]
    commented = set(re.findall(r"^\s*#\s*(CEM_[A-Z0-9_]+):", text, re.M))
    assert set(worker_secret["stringData"]) | commented <= required | optional
    assert "CEM_PSEUDONYM_KEY" in commented
    assert "cem-kafka-ca" in text and "ca.crt" in text, "how to create the CA bundle's Secret"


def test_k8s_configmap_has_only_non_secret_settings():
    cm = k8s_by_kind()["ConfigMap"]["data"]
    assert all(k.startswith("CEM_") for k in cm)
    assert not any(is_secret_name(k) for k in cm), [k for k in cm if is_secret_name(k)]
    assert WORKER_ENV - {"CEM_CLICKHOUSE_PASSWORD", "CEM_WEB_TOKEN"} <= set(cm)
    assert cm["CEM_METRICS_PORT"] == str(METRICS_PORT) and cm["CEM_WEB_PORT"] == str(STATUS_PORT)
    assert cm["CEM_CLICKHOUSE_USER"] == "cem_writer" and cm["CEM_PARTITIONS"] == str(PARTITIONS)
    assert cm["CEM_TRAINER"] == "process", "the workers and the trainer read it: the cem-trainer Deployment trains"
    fields = settings_fields()
    assert set(cm) <= fields, f"unknown settings: {set(cm) - fields}"


def test_k8s_configmap_kafka_security_and_binding():
    cm = k8s_by_kind()["ConfigMap"]["data"]
    assert cm["CEM_KAFKA_SECURITY_PROTOCOL"] in KAFKA_PROTOCOLS
    assert cm["CEM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", "an existing production cluster: SASL over TLS"
    assert cm["CEM_KAFKA_SASL_MECHANISM"] in KAFKA_SASL_MECHANISMS and cm["CEM_KAFKA_SASL_USERNAME"]
    assert cm["CEM_KAFKA_SSL_CAFILE"] == "/etc/cem/kafka/ca.crt"
    assert cm["CEM_METRICS_HOST"] == "0.0.0.0" and cm["CEM_WEB_HOST"] == "0.0.0.0"
    assert cm["CEM_CLICKHOUSE_MIGRATE"].lower() in FALSE, "the cem-migrate Job owns the schema"


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def check_k8s_pods(dep: dict, args: list[str]) -> dict:
    """What every cem Deployment keeps (the workers', the trainer's); its container."""
    kinds = k8s_by_kind()
    spec = dep["spec"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    name = dep["metadata"]["name"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(METRICS_PORT), name
    assert ann["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["image"].split(":")[0] == kinds["Kustomization"]["images"][0]["name"]
    assert container["args"] == args
    # Probes on the endpoints that need no token: alive (startup, liveness) and ready (readiness).
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and port_number(container, get["port"]) == STATUS_PORT, f"{name}: {probe}"
        assert "httpHeaders" not in get, f"{probe}: no token in the probe"
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
    refs = {next(iter(e)): e[next(iter(e))]["name"] for e in container["envFrom"]}
    assert refs["configMapRef"] == kinds["ConfigMap"]["metadata"]["name"]
    for env in container.get("env") or []:
        if is_secret_name(env["name"]):
            assert "secretKeyRef" in env.get("valueFrom", {}), f"{env['name']}: only from a Secret"
    assert {p["containerPort"] for p in container["ports"]} == {METRICS_PORT, STATUS_PORT}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert kinds["ConfigMap"]["data"]["CEM_DATA_DIR"] in mounts, "the data dir must be writable (read-only root FS)"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    return container


def test_k8s_deployment():
    kinds = k8s_by_kind()
    dep = kinds["Deployment"]
    assert 1 <= dep["spec"]["replicas"] <= int(kinds["ConfigMap"]["data"]["CEM_PARTITIONS"])
    container = check_k8s_pods(dep, ["worker"])
    refs = {next(iter(e)): e[next(iter(e))]["name"] for e in container["envFrom"]}
    assert refs["secretRef"] == kinds["Secret"]["metadata"]["name"]


def test_k8s_trainer_deployment():
    """One trainer pod, never two at once (Recreate), with the workers' probes and settings, and of the
    workers' Secret only the keys the trainer's policy allows, by name."""
    kinds, trainer = k8s_by_kind(), k8s_by_kind(trainer=True)
    dep = trainer["Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", "exactly one trainer at a time"
    assert "exactly one" in " ".join(K8S_TRAINER.read_text().lower().split()), "say why in a comment"
    container = check_k8s_pods(dep, ["trainer"])
    assert [next(iter(e)) for e in container["envFrom"]] == ["configMapRef"], "not the whole workers' Secret"
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if is_secret_name(e["name"])}
    required, optional = SERVICE_SECRETS["trainer"]
    assert required <= set(secret_env) <= required | optional
    for name, ref in secret_env.items():
        assert ref == {"name": kinds["Secret"]["metadata"]["name"], "key": name}, name
        assert name in kinds["Secret"]["stringData"], f"{name}: not in the Secret template"
    assert set(e["name"] for e in container["env"]) <= settings_fields()
    labels = spec["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] != kinds["Deployment"]["spec"]["template"]["metadata"]["labels"][
        "app.kubernetes.io/name"], "the workers' Service and PDB must not select the trainer"
    service = trainer["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["port"] for p in service["ports"]] == [METRICS_PORT], "metrics only, not the status port"


@pytest.mark.parametrize("trainer", [False, True], ids=["worker", "trainer"])
def test_k8s_deployment_mounts_the_kafka_ca_from_a_secret(trainer):
    kinds = k8s_by_kind()
    cafile = Path(kinds["ConfigMap"]["data"]["CEM_KAFKA_SSL_CAFILE"])
    pod = k8s_by_kind(trainer)["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(cafile.parent)]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["secretName"] == "cem-kafka-ca" and not secret.get("optional", False)
    assert [i["path"] for i in secret.get("items", [])] in ([], [cafile.name]) and cafile.name == "ca.crt"
    assert secret["secretName"] != kinds["Secret"]["metadata"]["name"], "the CA is not one of the worker's env secrets"


def test_k8s_migration_job():
    docs = {d["kind"]: d for p in sorted(K8S_MIGRATE.glob("*.yaml")) for d in load_yaml_all(p)}
    assert set(docs) == {"Kustomization", "Job", "Secret"}
    kust = docs["Kustomization"]
    assert kust["resources"] == ["job.yaml"], "the Secret template is never applied"
    assert kust["namespace"] == k8s_by_kind()["Kustomization"]["namespace"]
    assert kust["images"] == k8s_by_kind()["Kustomization"]["images"], "same image as the workers"
    job = docs["Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure") and job["spec"]["backoffLimit"] >= 1
    assert pod["securityContext"]["runAsNonRoot"] is True and pod.get("automountServiceAccountToken") is False
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"] and container["image"].split(":")[0] == kust["images"][0]["name"]
    assert not container.get("envFrom"), "the Job takes only what it needs, not the workers' ConfigMap or Secret"
    env = {e["name"]: e for e in container["env"]}
    assert env["CEM_CLICKHOUSE_USER"]["value"] == "cem_migrate"
    cm_name = k8s_by_kind()["ConfigMap"]["metadata"]["name"]
    for key in ("CEM_CLICKHOUSE_URL", "CEM_CLICKHOUSE_DATABASE"):
        ref = env[key]["valueFrom"]["configMapKeyRef"]
        assert ref == {"name": cm_name, "key": key}, key
    pw = env["CEM_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert pw == {"name": docs["Secret"]["metadata"]["name"], "key": "CEM_CLICKHOUSE_PASSWORD"}
    assert pw["name"] != k8s_by_kind()["Secret"]["metadata"]["name"], "its own Secret, not the workers'"
    secret_envs = {name for name in env if is_secret_name(name)}
    assert secret_envs == {"CEM_CLICKHOUSE_PASSWORD"}
    assert set(env) <= settings_fields()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def k8s_readme_sql() -> list[str]:
    """The SQL statements of deploy/k8s/README.md's ```sql block."""
    text = (K8S / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "one ```sql block with the users and grants"
    return [" ".join(stmt.split()) for stmt in blocks[0].split(";") if stmt.strip()]


def test_k8s_readme_sql_matches_the_users_file():
    """The SQL for servers with SQL-managed users grants what users.d/cem-users.xml grants, no more."""
    by_user: dict[str, dict[str, set[str]]] = {}
    created = set()
    for stmt in k8s_readme_sql():
        if m := re.fullmatch(r"CREATE USER (\w+) IDENTIFIED BY '…' HOST IP '([^']+)'(.*)", stmt):
            created.add(m.group(1))
            assert ipaddress.ip_network(m.group(2)).is_private, stmt
            if m.group(1) == "grafana":
                assert "readonly = 1" in m.group(3)
            continue
        m = re.fullmatch(r"GRANT (.+) ON (\S+) TO (\w+)", stmt)
        assert m, f"unexpected statement {stmt!r}"
        by_user.setdefault(m.group(3), {}).setdefault(m.group(2), set()).update(
            p.strip() for p in m.group(1).split(","))
    assert created == set(by_user) == CLICKHOUSE_USERS
    for user in CLICKHOUSE_USERS:
        assert by_user[user] == grant_map(user), user


def test_k8s_migrate_kustomize_renders():
    kubectl = optional_tool("kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(K8S_MIGRATE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert [d["kind"] for d in docs] == ["Job"] and docs[0]["metadata"]["namespace"] == "cem"
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"cem:{project_version()}"


def test_k8s_service_and_pdb_select_the_workers():
    kinds = k8s_by_kind()
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc = kinds["Service"]["spec"]
    assert svc["selector"].items() <= labels.items()
    assert [p["port"] for p in svc["ports"]] == [METRICS_PORT], "expose metrics only, not the status/query port"
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 1


def test_k8s_kustomize_renders():
    kubectl = optional_tool("kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert all(d["metadata"].get("namespace") == "cem" for d in docs if d["kind"] != "Namespace")

"""Prometheus metrics of the worker. Names follow Prometheus conventions; no customer ids as labels."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("cem_touchpoints_received", "Input records read, by channel ('unknown' if undecodable).", ["channel"], registry=r)
        self.processed = Counter("cem_touchpoints_processed", "Touchpoints validated, deduplicated and enriched.", ["channel"], registry=r)
        self.replayed = Counter("cem_touchpoints_replayed", "Records re-processed after a restart (outputs re-sent, state untouched).", ["channel"], registry=r)
        self.dead_lettered = Counter("cem_touchpoints_dead_lettered", "Records sent to the dead-letter topic.", ["reason", "stage"], registry=r)
        self.suppressed = Counter("cem_touchpoints_suppressed", "Touchpoints of erased customers, dropped (nothing kept).", ["channel"], registry=r)
        self.forwarded = Counter("cem_touchpoints_forwarded", "Touchpoints sent on to the partition of the state that takes them (identity stitching; counted again there).", ["channel"], registry=r)
        self.identity = Counter("cem_identity_events", "Identity stitching: claims by verdict (linked, owned, conflict, refused, shared, settled), merges, failures.", ["event"], registry=r)
        self.erasures = Counter("cem_erasures", "Erasure requests carried out (state, ClickHouse rows, pending examples).", registry=r)
        self.deduplicated = Counter("cem_touchpoints_deduplicated", "Redelivered touchpoints dropped (same event_id within the horizon).", ["channel"], registry=r)
        self.nps = Counter("cem_nps_responses", "NPS answers by category.", ["channel", "category"], registry=r)
        self.csat = Counter("cem_csat_responses", "CSAT answers; satisfied = 4-5.", ["channel", "satisfied"], registry=r)
        self.revenue = Counter("cem_revenue", "Net revenue (purchases - refunds) in order currency units.", ["channel"], registry=r)
        self.latency = Histogram("cem_processing_latency_seconds", "Worker receipt -> stage (enriched | committed to ClickHouse), per record.", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.ch_rows = Counter("cem_clickhouse_insert_rows", "Rows inserted into ClickHouse.", ["table"], registry=r)
        self.ch_batches = Counter("cem_clickhouse_insert_batches", "ClickHouse insert statements that succeeded.", ["table"], registry=r)
        self.ch_errors = Counter("cem_clickhouse_insert_errors", "ClickHouse insert attempts that failed (retried).", ["table"], registry=r)
        self.ch_seconds = Histogram("cem_clickhouse_insert_duration_seconds", "Duration of one ClickHouse insert.", ["table"], buckets=LATENCY_BUCKETS, registry=r)
        self.produced = Counter("cem_kafka_produced", "Records produced, by topic.", ["topic"], registry=r)
        self.produce_errors = Counter("cem_kafka_produce_errors", "Produce batches that failed, by topic.", ["topic"], registry=r)
        self.lag = Gauge("cem_consumer_lag", "Records behind the partition's end (high watermark - position).", ["topic", "partition"], registry=r)
        self.rebalances = Counter("cem_consumer_rebalances", "Partition assignments received by this worker.", registry=r)
        self.last_batch = Gauge("cem_worker_last_batch_timestamp_seconds", "Wall-clock time of the last processed batch.", registry=r)
        self.last_commit = Gauge("cem_worker_last_commit_timestamp_seconds", "Wall-clock time of the last commit that acked input.", registry=r)
        self.live = Gauge("cem_worker_live", "1 while the worker is live (see /healthz), 0 when an agent crashed or input waits without commits.", registry=r)
        self.stalled = Gauge("cem_worker_stalled_seconds", "Seconds input has waited with nothing committed (0 when not waiting).", registry=r)
        self.new_logs = Counter("cem_source_log_restarts", "Source partitions whose log started over (a new epoch: broker lost its log, topic re-created).", ["topic"], registry=r)
        self.registry_fetches = Counter("cem_schema_registry_requests", "Schema Registry lookups by outcome.", ["outcome"], registry=r)
        self.sentiment = Histogram("cem_sentiment_score", "Sentiment of scored texts.", buckets=(-1, -0.6, -0.2, 0.2, 0.6, 1), registry=r)
        self.churn_risk = Histogram("cem_churn_risk", "Churn risk after each scored touchpoint.", buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=r)
        self.profiles = Counter("cem_customer_profiles", "CRM profiles joined into customer state (cem.customers).", registry=r)
        self.model_quality = Gauge("cem_model_quality", "Progressive (test-then-train) model quality.", ["model", "metric", "version"], registry=r)
        self.model_drift = Counter("cem_model_drift", "Drifts detected on a model's error stream (ADWIN).", ["model"], registry=r)
        self.alerts = Counter("cem_alerts", "Alerts produced, by type and severity.", ["type", "severity"], registry=r)
        self.alert_latency = Histogram("cem_alert_latency_seconds", "Worker receipt -> alert produced.", buckets=LATENCY_BUCKETS, registry=r)

    def start_at_zero(self, tables: Iterable[str], topics: Iterable[str], models: Iterable[str]) -> None:
        """Create the error and drift series at 0 for every label value known up front: a labelled
        counter otherwise has no series until its first increment, so ``rate()`` panels and
        ``increase(...) > 0`` rules see "no data" on a healthy worker, and the first error of a new
        series has no earlier sample to differ from."""
        for table in tables:
            self.ch_errors.labels(table)
        for topic in topics:
            self.produce_errors.labels(topic)
        for model in models:
            self.model_drift.labels(model)
        self.live.set(1)

    def keep_lag_of(self, topic: str, partitions: set[str]) -> None:
        """Drop ``topic``'s lag of every partition but ``partitions`` (the held ones): a revoked
        partition's last value would stay exported for ever, counted twice in a sum over workers.

        >>> m = Metrics(); m.lag.labels("t", "0").set(3); m.lag.labels("t", "1").set(4); m.lag.labels("u", "0").set(5)
        >>> m.keep_lag_of("t", {"1"}); sorted(m.lag._metrics)
        [('t', '1'), ('u', '0')]
        """
        for labels in list(self.lag._metrics):  # prometheus_client keeps each label set's child there
            if labels[0] == topic and labels[1] not in partitions:
                self.lag.remove(*labels)

    def count(self, counter: Counter, tally: Tally) -> None:
        """Add a batch's tally in one call per label set: cheaper than one ``inc`` per record."""
        for labels, n in tally.items():
            counter.labels(*labels).inc(n) if isinstance(labels, tuple) else counter.labels(labels).inc(n)

    # SinkObserver for the ClickHouse sink
    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None:
        if error is not None:
            self.ch_errors.labels(target).inc()
            return
        self.ch_rows.labels(target).inc(rows)
        self.ch_batches.labels(target).inc()
        self.ch_seconds.labels(target).observe(seconds)

    def totals(self) -> dict:
        """Counter totals for summaries and ``cem top``: {'processed': n, 'dead_lettered': {reason: n}, ...}."""
        out: dict = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                name = sample.name.removeprefix("cem_").removesuffix("_total")
                out.setdefault(name, {})
                label = ",".join(sample.labels.values()) or "all"
                out[name][label] = out[name].get(label, 0) + sample.value
        return out


def observe_many(histogram: Histogram, value: float, n: int) -> None:
    """``histogram.observe(value)`` ``n`` times, in one step: a batch's records share their latency.

    prometheus_client has no bulk observe; this does what its ``Histogram.observe`` does (sum, then
    the first bucket whose bound holds the value), with ``n``. Pinned by a test against ``observe``.
    """
    if n <= 0:
        return
    histogram._raise_if_not_observable()
    histogram._sum.inc(value * n)
    for i, bound in enumerate(histogram._upper_bounds):
        if value <= bound:
            histogram._buckets[i].inc(n)
            break


class KafkaObserver:
    """SinkObserver for the Kafka sink."""

    def __init__(self, metrics: Metrics):
        self._m = metrics

    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None:
        if error is not None:
            self._m.produce_errors.labels(target).inc()
        else:
            self._m.produced.labels(target).inc(rows)

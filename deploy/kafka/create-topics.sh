#!/usr/bin/env bash
# Creates the CEM topics; idempotent. Run by the compose `kafka-init` service, and usable against any
# existing cluster (e.g. before deploying deploy/k8s). Topics that already exist are left as they are,
# except for the privacy settings, which are enforced on every run (see "enforce" below):
#
#   KAFKA_BOOTSTRAP=broker:9092 CEM_TOPIC_REPLICATION_FACTOR=3 deploy/kafka/create-topics.sh
#
# Environment:
#   KAFKA_BOOTSTRAP               bootstrap servers (default kafka:9092)
#   CEM_TOPIC_PARTITIONS          partitions of every topic (default 12 = the most workers that get work);
#                                 must equal the workers' CEM_PARTITIONS
#   CEM_TOPIC_REPLICATION_FACTOR  default 1 (single broker); use 3 in production
#   KAFKA_TOPICS_BIN              kafka-topics.sh (default /opt/kafka/bin/kafka-topics.sh)
#   KAFKA_CONFIGS_BIN             kafka-configs.sh (default /opt/kafka/bin/kafka-configs.sh)
#   KAFKA_COMMAND_CONFIG          optional client properties file (TLS / SASL); the principal needs
#                                 Create and AlterConfigs on the cem topics
#
# Access to the dead-letter topic (it keeps the original bytes, which may contain personal data) is not
# set here: see deploy/runbook.md, "Dead-letter topic: access and retention", for the kafka-acls commands.
set -euo pipefail

BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
PARTITIONS="${CEM_TOPIC_PARTITIONS:-12}"
RF="${CEM_TOPIC_REPLICATION_FACTOR:-1}"
KAFKA_TOPICS="${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}"
KAFKA_CONFIGS="${KAFKA_CONFIGS_BIN:-/opt/kafka/bin/kafka-configs.sh}"

common=(--bootstrap-server "$BOOTSTRAP")
if [[ -n "${KAFKA_COMMAND_CONFIG:-}" ]]; then
  common+=(--command-config "$KAFKA_COMMAND_CONFIG")
fi

# With replicas to spare, acknowledged writes must survive the loss of one broker.
durability=()
if (( RF >= 3 )); then
  durability=(min.insync.replicas=2)
fi

DAY_MS=86400000
# The dead-letter topic holds undecodable records byte for byte (possibly personal data): short retention.
DLQ_RETENTION_MS=$((7 * DAY_MS))

# create NAME CONFIG...   (every topic gets $PARTITIONS partitions; TOPIC_PARTITIONS=n create ... overrides)
create() {
  local name=$1
  shift
  local partitions=${TOPIC_PARTITIONS:-$PARTITIONS}
  local args=()
  local config
  for config in "$@" ${durability[@]+"${durability[@]}"}; do
    args+=(--config "$config")
  done
  echo "topic ${name}: ${partitions} partitions, replication ${RF}, ${*:-defaults}"
  "$KAFKA_TOPICS" "${common[@]}" --create --if-not-exists --topic "$name" \
    --partitions "$partitions" --replication-factor "$RF" ${args[@]+"${args[@]}"}
}

# enforce NAME CONFIG...   (sets configs on a topic that may predate them; idempotent)
enforce() {
  local name=$1
  shift
  local joined
  joined=$(IFS=,; echo "$*")
  echo "topic ${name}: enforce ${joined}"
  "$KAFKA_CONFIGS" "${common[@]}" --alter --entity-type topics --entity-name "$name" --add-config "$joined"
}

# Input, keyed by customer_id. Broker time (LogAppendTime) as the record timestamp: a producer cannot
# back- or future-date records to dodge retention or skew time-based lookups (event time is in the payload).
create cem.touchpoints          cleanup.policy=delete "retention.ms=$((7 * DAY_MS))" message.timestamp.type=LogAppendTime
# Undecodable / invalid records with the reason and the original bytes (may contain personal data):
# readable by the operators only (ACLs, see the runbook) and expired after a week, enough to replay after a fix.
create cem.touchpoints.dlq      cleanup.policy=delete "retention.ms=${DLQ_RETENTION_MS}"
create cem.touchpoints.enriched cleanup.policy=delete "retention.ms=$((3 * DAY_MS))"
create cem.alerts               cleanup.policy=delete "retention.ms=$((7 * DAY_MS))"
# Latest value per key: CRM profiles by customer_id, model snapshots, the Faust state-table changelog
# (Faust app id `cem`, table `customer_state`; co-partitioned with cem.touchpoints).
create cem.customers                  cleanup.policy=compact
# Model snapshots and checkpoints (the trainer's holds a horizon of pending churn labels: tens of MB;
# the pipeline's producers and ModelFeed allow 64 MB, schemas/contract.py MODEL_MAX_BYTES).
create cem.models                     cleanup.policy=compact max.message.bytes=67108864
create cem-customer_state-changelog   cleanup.policy=compact
# GDPR erasure requests, keyed by customer_id like cem.touchpoints and co-partitioned with it (the worker
# that owns a customer's partition erases its state); compacted: the latest request per customer is kept,
# so a replay of old touchpoints still honours it.
create cem.erasures                   cleanup.policy=compact
# Identity stitching's own records between partitions (touchpoints on their way to the state that takes
# them, identifier claims, anonymous histories merged into their customer): co-partitioned with
# cem.touchpoints; read within seconds, like a Kafka Streams repartition topic, so a week is ample.
create cem.identity                   cleanup.policy=delete "retention.ms=$((7 * DAY_MS))"
# Training examples, one partition so each model trains in one place and one order; records are acked
# at the trainer's checkpoint (every minute), so a week of retention is ample.
TOPIC_PARTITIONS=1 create cem.model.training cleanup.policy=delete "retention.ms=$((7 * DAY_MS))"

# --if-not-exists leaves an existing topic alone: make sure the co-partitioned ones really match, since a
# state table whose changelog has a different partition count silently loses state on rebalance.
for topic in cem.touchpoints cem-customer_state-changelog cem.erasures cem.identity; do
  described=$("$KAFKA_TOPICS" "${common[@]}" --describe --topic "$topic")
  actual=$(grep -o 'PartitionCount: *[0-9]*' <<<"$described" | head -n1 | grep -o '[0-9]*$' || true)
  if [[ "$actual" != "$PARTITIONS" ]]; then
    echo "error: topic $topic has ${actual:-unknown} partitions, expected $PARTITIONS (CEM_TOPIC_PARTITIONS)" >&2
    exit 1
  fi
done

# --if-not-exists does not update an existing topic: apply the privacy-relevant settings on every run.
enforce cem.touchpoints     message.timestamp.type=LogAppendTime
enforce cem.touchpoints.dlq "retention.ms=${DLQ_RETENTION_MS}"
echo "cem topics ready"

"""Output sinks (ClickHouse, Kafka): one small protocol -- write a batch, flush, close."""

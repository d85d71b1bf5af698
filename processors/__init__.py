"""Domain logic as plain, typed, synchronous functions and classes: no Kafka, Faust or ClickHouse here."""

"""Avro schemas (``*.avsc``) and the wire codecs: the one source of truth for field names."""

from schemas.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    RecordEncoder,
    SchemaRegistry,
    fingerprint,
    load_schema,
)
from schemas.contract import Rejected

__all__ = [
    "AvroCodec",
    "CONFLUENT_MAGIC",
    "Rejected",
    "RecordEncoder",
    "SINGLE_OBJECT_MAGIC",
    "SchemaRegistry",
    "fingerprint",
    "load_schema",
]

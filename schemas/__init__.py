"""Avro schemas (``*.avsc``) and the wire codecs: the one source of truth for field names."""

from schemas.compiled import search_path

__path__ = search_path(__name__, __path__)  # the compiled modules, where they match the sources

from schemas.codec import (  # noqa: E402 - after the search path is set
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    RecordEncoder,
    SchemaRegistry,
    fingerprint,
    load_schema,
)
from schemas.contract import Rejected  # noqa: E402

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

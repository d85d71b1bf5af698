"""Output sinks (ClickHouse, Kafka): one small protocol -- write a batch, flush, close."""

from schemas.compiled import search_path

__path__ = search_path(__name__, __path__)  # the compiled modules, where they match the sources

"""Domain logic as plain, typed, synchronous functions and classes: no Kafka, Faust or ClickHouse here."""

from schemas.compiled import search_path

__path__ = search_path(__name__, __path__)  # the compiled modules, where they match the sources

"""Operator views: the worker's web endpoints, ``cem top``, and the read side of ClickHouse."""

"""Pseudonymous identifiers: a keyed hash (HMAC-SHA256) in place of a customer id or a contact.

Never a bare hash: customer ids, e-mail addresses and phone numbers have little entropy, so anyone
could hash every candidate and read the ids back. With a secret key only its holder can, and every
worker holding the same key maps an id to the same pseudonym, so state, storage and outputs agree.

>>> p = Pseudonymizer(b"a key of at least sixteen bytes")
>>> p("cust-000042") == p("cust-000042"), p("cust-000042").startswith("p:"), len(p("cust-000042"))
(True, True, 34)
>>> p("cust-000042") == Pseudonymizer(b"another key, also sixteen+")("cust-000042")
False
>>> p(p("cust-000042")) == p("cust-000042")   # idempotent: a pseudonym is never hashed again
True
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "p:"
MIN_KEY_BYTES = 16
METHODS = ("hmac-sha256",)


class Pseudonymizer:
    """``pseudonymize(identifier) -> "p:" + 32 hex digits`` of HMAC-SHA256 under ``key``."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonym key must have at least {MIN_KEY_BYTES} bytes (CEM_PSEUDONYM_KEY)")
        self._key = key

    def __call__(self, identifier: str) -> str:
        if identifier.startswith(PREFIX):
            return identifier
        mac = hmac.new(self._key, identifier.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return PREFIX + mac.hexdigest()[:32]


def from_settings(method: str, key: str) -> Pseudonymizer | None:
    """The configured pseudonymizer (``CEM_PSEUDONYMIZE``, ``CEM_PSEUDONYM_KEY``), or None when off.

    >>> from_settings("", "") is None
    True
    >>> from_settings("sha1", "x" * 20)
    Traceback (most recent call last):
    ...
    ValueError: CEM_PSEUDONYMIZE must be one of hmac-sha256 (or empty), not 'sha1'
    """
    if not method:
        return None
    if method not in METHODS:
        raise ValueError(f"CEM_PSEUDONYMIZE must be one of {', '.join(METHODS)} (or empty), not {method!r}")
    return Pseudonymizer(key.encode())

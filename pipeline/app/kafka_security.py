"""Kafka security settings, in the two forms cem's clients take: aiokafka's keyword arguments (every
producer, consumer and admin client cem creates) and Faust's ``broker_credentials``.

>>> from pipeline.settings import Settings
>>> client_options(Settings())
{}
>>> sorted(client_options(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
...                                kafka_sasl_username="cem", kafka_sasl_password="s3cret")).items())
[('sasl_mechanism', 'SCRAM-SHA-512'), ('sasl_plain_password', 's3cret'), ('sasl_plain_username', 'cem'), ('security_protocol', 'SASL_PLAINTEXT')]
"""

from __future__ import annotations

import ssl
from typing import Any

from pipeline.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class SecuritySettingsError(ValueError):
    pass


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured protocol (empty for PLAINTEXT)."""
    protocol = _protocol(settings)
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL"):
        mechanism = settings.kafka_sasl_mechanism.upper()
        if mechanism not in MECHANISMS:
            raise SecuritySettingsError(f"CEM_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, not {mechanism!r}")
        if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
            raise SecuritySettingsError(f"{protocol} needs CEM_KAFKA_SASL_USERNAME and CEM_KAFKA_SASL_PASSWORD")
        options.update(sasl_mechanism=mechanism, sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password)
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Server verification against ``kafka_ssl_cafile`` (or the system's CAs), and the client
    certificate for mutual TLS when one is configured."""
    try:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise SecuritySettingsError(f"CEM_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile!r}: {exc}") from None
    if settings.kafka_ssl_certfile:
        try:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise SecuritySettingsError(
                f"CEM_KAFKA_SSL_CERTFILE={settings.kafka_ssl_certfile!r} / CEM_KAFKA_SSL_KEYFILE: {exc}") from None
    return context


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the configured protocol (None for PLAINTEXT)."""
    import faust
    from faust.types.auth import SASLMechanism

    protocol = _protocol(settings)
    if protocol == "PLAINTEXT":
        return None
    options = client_options(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
        mechanism=SASLMechanism(options["sasl_mechanism"]),
        ssl_context=options.get("ssl_context"),
    )


def _protocol(settings: Settings) -> str:
    protocol = settings.kafka_security_protocol.upper()
    if protocol not in PROTOCOLS:
        raise SecuritySettingsError(f"CEM_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    return protocol

"""TLS in one place: the hub's HTTPS server context and the one context every Kafka client uses.

HTTPS (安全管理ガイドライン 6.0): TLS 1.3 unless RENKEI_TLS_MIN_VERSION=1.2; with
RENKEI_TLS_CLIENT_CA, client certificates signed by that CA are checked when presented
("optional") or demanded ("required", RENKEI_TLS_CLIENT_CERT).
Kafka: the CA of the brokers (RENKEI_KAFKA_SSL_CAFILE, else the system store), and the hub's own
certificate (RENKEI_KAFKA_SSL_CERTFILE / _KEYFILE) for brokers with ssl.client.auth=required.
"""

from __future__ import annotations

import ssl

from renkei.settings import Settings

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(settings: Settings) -> ssl.SSLContext:
    if not settings.tls_enabled:
        raise ValueError("RENKEI_TLS_CERT and RENKEI_TLS_KEY are both needed for HTTPS")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[settings.tls_min_version]
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=str(settings.tls_client_ca))
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.tls_client_cert == "required" else ssl.CERT_OPTIONAL
        )
    return context


def kafka_context(settings: Settings) -> ssl.SSLContext | None:
    """None for PLAINTEXT / SASL_PLAINTEXT; else the context of every aiokafka client and of
    the raw probes (renkei.kafka_probe)."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.kafka_ssl_certfile is not None:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password.get_secret_value() if password else None,
        )
    return context

"""Absolute links the hub hands out (Bundle links, fullUrl), from settings, never the request.

The Host header is the caller's to choose: links built from it would let a forged request
produce Bundles pointing elsewhere (cache poisoning, phishing through a proxy).
"""

from __future__ import annotations

from renkei.settings import Settings


def public_base_url(settings: Settings) -> str:
    """RENKEI_PUBLIC_BASE_URL without a trailing slash; else http://{host}:{port}."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    return f"http://{settings.host}:{settings.port}"

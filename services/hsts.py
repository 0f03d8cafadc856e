"""HSTS under TLS: browsers that reached the hub over HTTPS never fall back to plain HTTP.

A pure ASGI wrapper (no BaseHTTPMiddleware: it runs on every response and must stay cheap).
Other security headers are added elsewhere (services.app); this one only under TLS.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from renkei.settings import Settings

HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class HstsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), HSTS]
            await send(message)

        await self.app(scope, receive, send_with_hsts)


def install_hsts(app: FastAPI, settings: Settings) -> None:
    if settings.tls_enabled:
        app.add_middleware(HstsMiddleware)

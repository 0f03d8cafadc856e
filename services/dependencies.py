"""Dependencies every view shares: the database session and the hub runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.hub.sessions() as session:
        yield session

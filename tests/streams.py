"""A real HTTP server over a test hub (uvicorn on loopback, in the test's loop) and a Server-Sent
Events reader: the ASGI transport of the other tests does not stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from renkei.hub import Hub
from services.app import create_app
from services.notifications.stream import closing_server

STREAM = "/notifications/stream"


@dataclass
class Served:
    hub: Hub
    base: str
    server: uvicorn.Server
    task: asyncio.Task


@asynccontextmanager
async def served(hub: Hub) -> AsyncIterator[Served]:
    config = uvicorn.Config(
        create_app(hub), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = closing_server(config, hub)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(hub, f"http://127.0.0.1:{port}", server, task)
    finally:
        hub.notifications_routed.close_streams()
        server.should_exit = True
        with suppress(Exception):
            await asyncio.wait_for(task, 10)


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any
    received: float  # the loop's clock when its blank line arrived


@dataclass
class Listener:
    """An open stream read in the background: its events and comment lines as they come."""

    base: str
    headers: dict
    params: dict | None = None
    status: int | None = None
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None

    async def start(self) -> Listener:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream(
                "GET", self.base + STREAM, headers=self.headers, params=self.params
            ) as response,
        ):
            self.status = response.status_code
            self.opened.set()
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "":
                    if "data" in fields:
                        data = fields["data"]
                        with suppress(ValueError):
                            data = json.loads(data)
                        self.events.append(
                            SseEvent(
                                fields.get("id"), fields.get("event", "message"), data, loop.time()
                            )  # fmt: skip
                        )
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
        self.ended = True

    def communications(self) -> list[SseEvent]:
        return [e for e in self.events if e.event == "communication"]

    async def wait_for(self, condition: Callable[[Listener], bool], within: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not condition(self):
            if self._task is not None and self._task.done():
                self._task.result()
                if not condition(self):
                    raise AssertionError(f"stream ended: {self.events} {self.comments}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not within {within}s: {self.events} {self.comments}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._task


def event_ids_in(listener: Listener) -> list[str]:
    return [e.data["identifier"][0]["value"] for e in listener.communications()]

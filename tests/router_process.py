"""A router in its own OS process, for tests that kill one for real.

Settings come from the environment (RENKEI_*), as for the hub. Prints one line per record it
handles: ``handled <n> routed <m> <event id>``. With ``--die-after-write`` it dies with
os._exit right after its first database commit, before the Kafka offset commit: no cleanup,
no leaving the group, exactly like a SIGKILL at the worst moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from consumers.routing.router import Router
from renkei.hub import Hub
from renkei.settings import Settings


async def main(die_after_write: bool) -> None:
    settings = Settings()
    hub = Hub(settings)
    await hub.start(workers=False)
    assert hub.broker is not None
    router: Router

    def after_write(event_id: str) -> None:
        print(f"handled {router.handled} routed {router.routed} {event_id}", flush=True)
        if die_after_write:
            os._exit(137)

    router = Router(hub.sessions, hub.broker, settings, after_write=after_write)
    print("ready", flush=True)
    await router.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--die-after-write", action="store_true")
    asyncio.run(main(parser.parse_args().die_after_write))

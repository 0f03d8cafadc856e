"""The embedded defaults of `make run`: Tansu from the wheel, started, watched and stopped."""

from __future__ import annotations

import asyncio
import signal

import httpx

from renkei.hub import Hub
from renkei.settings import Settings
from schemas.events import EventType
from services.app import create_app
from tests.hubtools import event_id_of, headers, load_region, message, sender_of, wait_routed


async def test_hub_starts_tansu_survives_its_death_and_stops_it(tmp_path) -> None:
    settings = Settings(
        data_dir=tmp_path / "var", kafka_bootstrap=None, database_url=None,
        topic_partitions=2, consumer_session_timeout_ms=2000, relay_redeliver_after_seconds=3,
    )  # fmt: skip
    hub = Hub(settings)
    await hub.start()
    tansu = hub._embedded
    try:
        assert tansu is not None and tansu.running
        assert hub.broker.info.engine == "tansu"
        assert (tmp_path / "var" / "renkei.sqlite3").exists()
        await load_region(hub)
        tansu._process.send_signal(signal.SIGKILL)  # the broker dies under the hub
        transport = httpx.ASGITransport(app=create_app(hub))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            bundle = message(EventType.ADMISSION)
            response = await client.post(
                "/fhir/$process-message", json=bundle, headers=headers(hub, sender_of(bundle))
            )
        assert response.status_code == 202
        await wait_routed(hub, [event_id_of(response.json())], within=90)
        assert tansu.running
    finally:
        await hub.stop()
    assert not tansu.running
    await asyncio.sleep(0)

"""Crypto-shredding: ``renkei patient forget ID`` destroys the patient's data keys.

Run as its own process against the running hub's database and keys (like an operator would),
so the hub's in-memory key cache is not what makes it work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from producers.models import OutboxRecord
from schemas.events import EventType
from services.intake.models import Event
from services.notifications.communication import FORGOTTEN_PATIENT
from services.notifications.models import Notification
from tests.hubtools import accept, event_id_of, headers, load_region, message, wait_routed

NURSE = "misawa-visiting-nurse-1"
ROOT = Path(__file__).resolve().parents[1]


def forget_cli(hub, *args: str, answer: str = "") -> subprocess.CompletedProcess:  # noqa: ANN001
    env = {
        **os.environ,
        "RENKEI_DATA_DIR": str(hub.settings.data_dir),
        "RENKEI_DATABASE_URL": hub.settings.resolved_database_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "patient", "forget", *args],
        input=answer, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip


async def nurse_communications(api, event_id: str) -> list[dict]:
    response = await api.client.get(
        "/fhir/Communication", headers=headers(api.hub, NURSE, "member")
    )
    assert response.status_code == 200, response.text
    entries = [e["resource"] for e in response.json()["entry"]]
    return [c for c in entries if c["identifier"][0]["value"] == event_id]


async def test_forget_shreds_the_patient_and_later_messages_are_not_routed(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    # The recipient reads the registry's name, never the message's.
    bundle = message(EventType.ADMISSION, "p01")
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["name"] = [{"text": "偽名 次郎"}]
    event_id = await accept(hub, live_api.client, bundle)
    await wait_routed(hub, [event_id])
    [before] = await nurse_communications(live_api, event_id)
    assert "三沢 花子" in before["payload"][0]["contentString"]
    assert "偽名" not in before["payload"][0]["contentString"]
    assert "contentAttachment" in before["payload"][-1]

    refused = await asyncio.to_thread(forget_cli, hub, "p01", answer="no\n")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    admin = headers(hub, "region-office", "region-admin")
    assert (await live_api.client.get("/fhir/Patient/p01", headers=admin)).status_code == 200

    done = await asyncio.to_thread(forget_cli, hub, "p01", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "三沢" not in done.stdout + done.stderr

    gone = await live_api.client.get("/fhir/Patient/p01", headers=admin)
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert gone.json()["issue"][0]["code"] == "deleted"
    careteams = await live_api.client.get("/fhir/CareTeam?subject=Patient/p01", headers=admin)
    assert careteams.json()["total"] == 0
    assert (await live_api.client.get("/fhir/Patient/p02", headers=admin)).status_code == 200

    [after] = await nurse_communications(live_api, event_id)
    text = json.dumps(after, ensure_ascii=False)
    assert FORGOTTEN_PATIENT in after["payload"][0]["contentString"]
    assert "三沢" not in text and "花子" not in text
    assert not any("contentAttachment" in p for p in after["payload"])

    # A later message for the same patient: accepted (kept), never routed.
    later = message(EventType.DISCHARGE, "p01")
    response = await live_api.client.post(
        "/fhir/$process-message", json=later, headers=headers(hub, "misawa-general-hospital")
    )
    assert response.status_code == 202, response.text
    later_id = event_id_of(response.json())
    other_id = await accept(hub, live_api.client, message(EventType.DISCHARGE, "p02"))
    await wait_routed(hub, [other_id])  # the hub is routing; p01's event stays unrouted
    async with hub.sessions() as session:
        event = await session.get(Event, later_id)
        assert (event.status, event.routed_at) == ("forgotten", None)
        assert event.bundle_sealed is not None  # kept, sealed under a key of its own
        assert (
            await session.scalar(
                select(func.count())
                .select_from(OutboxRecord)
                .where(OutboxRecord.event_id == later_id)
            )
            == 0
        )
        assert (
            await session.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.event_id == later_id)
            )
            == 0
        )


async def test_forget_of_an_unknown_patient_fails(api) -> None:
    result = await asyncio.to_thread(forget_cli, api.hub, "nobody", "--yes")
    assert result.returncode == 1 and "no such Patient" in result.stderr


async def test_keys_rotate_rewraps_with_progress_and_the_hub_still_reads(api) -> None:
    from renkei.crypto import DataKey

    hub = api.hub
    await load_region(hub)
    env = {
        **os.environ,
        "RENKEI_DATA_DIR": str(hub.settings.data_dir),
        "RENKEI_DATABASE_URL": hub.settings.resolved_database_url,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "keys", "rotate", "--progress"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The progress line on stderr (asked for: not a terminal); the result on stdout.
    total = re.search(r"re-wrapped (\d+)/(\d+) \(100%\)", result.stderr)
    assert total is not None and total.group(1) == total.group(2) != "0", result.stderr
    assert f"done: {total.group(1)} data keys re-wrapped" in result.stdout
    new_kek = hub.keyring.kek.current_id()  # the hub sees the rotation (re-read at each wrap)
    async with hub.sessions() as session:
        assert set((await session.scalars(select(DataKey.kek_id))).all()) == {new_kek}
    hub.keyring.invalidate(list(hub.keyring._deks))  # unwrap again, under the new KEK
    admin = headers(hub, "region-office", "region-admin")
    response = await api.client.get("/fhir/Patient/p01", headers=admin)
    assert response.status_code == 200 and response.json()["birthDate"] == "1936-05-12"

"""Helpers for tests that drive a whole hub: load the region, post messages, wait for routing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import func, select

from consumers.routing.models import SuppressedDelivery
from renkei.hub import Hub
from schemas.events import EventType
from services.auth.service import Role, issue_token
from services.demo_region import region_resources, sample_message_about
from services.intake.models import Event
from services.notifications.models import Notification
from services.registry import service as registry

HOSPITAL = "misawa-general-hospital"


async def load_region(hub: Hub) -> None:
    """The demo region, written through the registry service (the views are tested apart)."""
    async with hub.sessions() as session:
        for resource in region_resources():
            await registry.write(session, resource["resourceType"], resource, resource["id"])
        await session.commit()


def headers(hub: Hub, org_id: str, role: str = "system", practitioner: str | None = None) -> dict:
    token = issue_token(hub.settings.keys_dir, org_id, Role(role), practitioner)
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


def message(event: EventType, patient_id: str = "p01", message_id: str | None = None) -> dict:
    """The contract's sample for ``event``, about a region patient, with a fresh header id."""
    bundle = sample_message_about(event, patient_id)  # the sender's own number for them
    bundle["entry"][0]["resource"]["id"] = message_id or f"mh-{uuid.uuid4().hex}"
    return bundle


def sender_of(bundle: dict) -> str:
    return bundle["entry"][0]["resource"]["sender"]["reference"].removeprefix("Organization/")


async def unrouted_count(hub: Hub, event_ids: list[str]) -> int:
    async with hub.sessions() as session:
        return await session.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.id.in_(event_ids), Event.routed_at.is_(None))
        )


async def wait_routed(hub: Hub, event_ids: list[str], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        pending = await unrouted_count(hub, event_ids)
        if pending == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{pending} of {len(event_ids)} events not routed in {within}s")
        await asyncio.sleep(0.05)


async def notifications_of(hub: Hub, event_id: str) -> dict[str, Any]:
    """recipient reference -> priority, for one event (read from the database)."""
    async with hub.sessions() as session:
        rows = await session.execute(
            select(Notification.recipient, Notification.priority).where(
                Notification.event_id == event_id
            )
        )
        return {r.recipient: r.priority for r in rows}


async def suppressed_of(hub: Hub, event_id: str) -> dict[str, str]:
    async with hub.sessions() as session:
        rows = await session.execute(
            select(SuppressedDelivery.recipient, SuppressedDelivery.reason).where(
                SuppressedDelivery.event_id == event_id
            )
        )
        return {r.recipient: r.reason for r in rows}


def event_id_of(outcome: dict) -> str:
    return outcome["issue"][0]["details"]["coding"][0]["code"]


async def accept(hub: Hub, client, bundle: dict) -> str:  # noqa: ANN001 - httpx.AsyncClient
    """POST a message as its sender; it must be accepted as new (202). Returns the event id."""
    response = await client.post(
        "/fhir/$process-message", json=bundle, headers=headers(hub, sender_of(bundle))
    )
    assert response.status_code == 202, response.text
    return event_id_of(response.json())


async def notification_count(hub: Hub, event_ids: list[str]) -> int:
    async with hub.sessions() as session:
        return await session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.event_id.in_(event_ids))
        )

"""``renkei demo``: load the demo region into a running hub, post one event of each type, and
print who got what. Talks to the hub over HTTP like any partner system would.
"""

from __future__ import annotations

import time
import uuid

import httpx

from renkei.settings import get_settings
from schemas.events import EVENT_RULES, EventType
from services.auth.service import Role, issue_token
from services.demo_region import (
    PRACTITIONERS,
    organization_names,
    region_resources,
    sample_message_about,
)
from services.progress import Progress


def _headers(org_id: str, role: Role, practitioner: str | None = None) -> dict[str, str]:
    token = issue_token(get_settings().keys_dir, org_id, role, practitioner, ttl_seconds=600)
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


def load_region(client: httpx.Client, progress: bool | None = None) -> int:
    admin = _headers(get_settings().region_org, Role.REGION_ADMIN)
    resources = region_resources()
    line = Progress("registered", len(resources), enabled=progress)
    for resource in resources:
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        response = client.put(url, json=resource, headers=admin)
        if response.status_code not in (200, 201):
            raise SystemExit(f"registry refused {url}: {response.status_code} {response.text}")
        line.advance()
    line.finish()
    return len(resources)


def post_events(client: httpx.Client) -> dict[EventType, str]:
    """Post each sample with a fresh MessageHeader id, so every demo run is new events."""
    run = uuid.uuid4().hex[:8]
    events = {}
    for event_type in EventType:
        bundle = sample_message_about(event_type)  # p01, in the sender's own numbering
        header = bundle["entry"][0]["resource"]
        header["id"] = f"{header['id']}-{run}"
        sender = header["sender"]["reference"].removeprefix("Organization/")
        response = client.post(
            "/fhir/$process-message", json=bundle, headers=_headers(sender, Role.SYSTEM)
        )
        if response.status_code not in (200, 202):
            raise SystemExit(f"{event_type}: {response.status_code} {response.text}")
        coding = response.json()["issue"][0]["details"]["coding"][0]
        events[event_type] = coding["code"]
    return events


def run_demo(base_url: str, timeout: float, progress: bool | None = None) -> int:
    """``progress``: the progress lines on stderr (None: only when it is a terminal)."""
    names = organization_names()
    with httpx.Client(base_url=base_url, timeout=10) as client:
        print(f"連携ハブ {base_url}: デモ地域を登録しています / loading the demo region ...")
        print(
            f"  {load_region(client, progress)} resources "
            "(11 organizations, 10 patients, care teams, consents)"
        )
        events = post_events(client)
        for event_type, event_id in events.items():
            print(
                f"  posted {event_type.value:13} "
                f"{EVENT_RULES[event_type].display_ja:4} event {event_id}"
            )
        print("配信結果 / who got what:")
        wanted = set(events.values())
        seen: dict[str, list[str]] = {}
        deadline = time.monotonic() + timeout
        line = Progress("events delivered", len(wanted), enabled=progress)
        while time.monotonic() < deadline:
            seen = _deliveries(client, names, wanted)
            line.update(len(wanted & set(seen)))
            if {e for e in seen} >= wanted and _settled(client, names, wanted, seen):
                break
            time.sleep(0.5)
        line.finish()
        for event_type, event_id in events.items():
            lines = seen.get(event_id, [])
            print(f"  {EVENT_RULES[event_type].display_ja}（{event_type.value}）→ {len(lines)} 件")
            for line in sorted(lines):
                print(f"     {line}")
        missing = wanted - set(seen)
        if missing:
            print(f"  {len(missing)} event(s) not delivered within {timeout:.0f}s")
            return 1
    return 0


def _deliveries(
    client: httpx.Client, names: dict[str, str], wanted: set[str]
) -> dict[str, list[str]]:
    """Read every organization's and every practitioner's list, as they would."""
    readers = [(org_id, None) for org_id in names]
    readers += [(org_id, pract_id) for pract_id, _n, _r, org_id, _role in PRACTITIONERS]
    seen: dict[str, list[str]] = {}
    counted: set[str] = set()
    for org_id, practitioner in readers:
        name = names[org_id]
        response = client.get(
            "/fhir/Communication",
            params={"_count": 200},
            headers=_headers(org_id, Role.MEMBER, practitioner),
        )
        response.raise_for_status()
        for entry in response.json().get("entry", []):
            resource = entry["resource"]
            event_id = resource["identifier"][0]["value"]
            if event_id in wanted and resource["id"] not in counted:
                counted.add(resource["id"])
                recipient = resource["recipient"][0]["reference"]
                seen.setdefault(event_id, []).append(
                    f"{resource['priority']:7} {name}（{recipient}）"
                )
    return seen


def _settled(client: httpx.Client, names, wanted, seen) -> bool:  # noqa: ANN001
    """Routing writes all of an event's notifications at once; one more look confirms."""
    time.sleep(0.3)
    return _deliveries(client, names, wanted) == seen

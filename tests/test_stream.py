"""The live stream (GET /notifications/stream) over a real HTTP server on loopback, with the
whole hub behind it (broker, relay, router): events after routing, resume with Last-Event-ID
or ?since=, heartbeats, the audience, tokens that stop being valid, shutdown."""

from __future__ import annotations

import asyncio
import signal

import httpx
import jwt

from schemas.events import EventType
from services.auth.verifier import revoke_token
from tests.hubtools import event_id_of, headers, load_region, message, sender_of, wait_routed
from tests.streams import Listener, event_ids_in, served

NURSE = "misawa-visiting-nurse-1"  # care team A (p01-p05), receives as an organization
HACHINOHE = "hachinohe-home-clinic"  # care team B (p06-p10) only


async def post_routed(live_api, event: EventType, patient: str = "p01") -> str:
    bundle = message(event, patient)
    response = await live_api.client.post(
        "/fhir/$process-message", json=bundle, headers=headers(live_api.hub, sender_of(bundle))
    )
    assert response.status_code == 202, response.text
    event_id = event_id_of(response.json())
    await wait_routed(live_api.hub, [event_id])
    return event_id


def reader(live_api, org: str = NURSE) -> dict:
    return headers(live_api.hub, org, "member")


async def test_a_routed_notification_arrives_as_its_communication(live_api) -> None:
    await load_region(live_api.hub)
    earlier = await post_routed(live_api, EventType.ADMISSION)  # before the stream: not sent
    async with served(live_api.hub) as server:
        listener = await Listener(server.base, reader(live_api)).start()
        assert listener.status == 200
        event_id = await post_routed(live_api, EventType.DISCHARGE)
        await listener.wait_for(lambda s: len(s.communications()) >= 1)
        [sent] = listener.communications()
        assert event_ids_in(listener) == [event_id] != [earlier]
        assert sent.id is not None and sent.id.isdigit()
        # The same resource GET /fhir/Communication/{id} answers (one shaping function).
        read = await live_api.client.get(
            f"/fhir/Communication/{sent.data['id']}", headers=reader(live_api)
        )
        assert read.json() == sent.data
        await listener.stop()


async def test_resume_after_a_disconnect_gives_exactly_the_missed_ones(live_api) -> None:
    await load_region(live_api.hub)
    async with served(live_api.hub) as server:
        first = await Listener(server.base, reader(live_api)).start()
        seen = await post_routed(live_api, EventType.ADMISSION)
        await first.wait_for(lambda s: len(s.communications()) == 1)
        last_id = first.communications()[-1].id
        await first.stop()  # the connection drops

        missed = [
            await post_routed(live_api, EventType.DISCHARGE),
            await post_routed(live_api, EventType.END_OF_LIFE, "p02"),
        ]
        resumed = await Listener(
            server.base, {**reader(live_api), "Last-Event-ID": last_id}
        ).start()
        await resumed.wait_for(lambda s: len(s.communications()) >= 2)
        await asyncio.sleep(0.5)  # nothing more may follow
        assert event_ids_in(resumed) == missed
        assert seen not in event_ids_in(resumed)
        ids = [int(e.id) for e in resumed.communications()]
        assert ids == sorted(ids) and min(ids) > int(last_id)

        # ?since= is the same cursor in the URL (for clients that cannot set the header).
        since = await Listener(server.base, reader(live_api), {"since": last_id}).start()
        await since.wait_for(lambda s: len(s.communications()) >= 2)
        await asyncio.sleep(0.3)
        assert event_ids_in(since) == missed
        for listener in (resumed, since):
            await listener.stop()


async def test_heartbeats_are_comment_lines(live_api) -> None:
    await load_region(live_api.hub)
    live_api.hub.settings.stream_heartbeat_seconds = 0.2
    async with served(live_api.hub) as server:
        listener = await Listener(server.base, reader(live_api)).start()
        await listener.wait_for(lambda s: s.comments.count("heartbeat") >= 3, within=5)
        assert listener.communications() == []
        await listener.stop()


async def test_another_organizations_notification_never_appears(live_api) -> None:
    await load_region(live_api.hub)
    async with served(live_api.hub) as server:
        nurse = await Listener(server.base, reader(live_api)).start()
        hachinohe = await Listener(server.base, reader(live_api, HACHINOHE)).start()
        team_a = await post_routed(live_api, EventType.ADMISSION, "p01")
        team_b = await post_routed(live_api, EventType.ADMISSION, "p06")
        await hachinohe.wait_for(lambda s: len(s.communications()) >= 1)
        await nurse.wait_for(lambda s: len(s.communications()) >= 1)
        await asyncio.sleep(0.5)
        assert event_ids_in(hachinohe) == [team_b]
        assert event_ids_in(nurse) == [team_a]
        for listener in (nurse, hachinohe):
            await listener.stop()


async def test_no_token_is_401_and_a_bad_cursor_400(live_api) -> None:
    await load_region(live_api.hub)
    async with served(live_api.hub) as server, httpx.AsyncClient(base_url=server.base) as client:
        response = await client.get("/notifications/stream")
        assert response.status_code == 401
        assert response.json()["resourceType"] == "OperationOutcome"
        bad = await client.get(
            "/notifications/stream", headers={**reader(live_api), "Last-Event-ID": "x1"}
        )
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
        auditor = headers(live_api.hub, NURSE, "auditor")
        assert (await client.get("/notifications/stream", headers=auditor)).status_code == 403


async def test_a_revoked_token_closes_the_stream(live_api) -> None:
    await load_region(live_api.hub)
    live_api.hub.settings.stream_poll_seconds = 0.1
    hdrs = reader(live_api)
    token = hdrs["Authorization"].removeprefix("Bearer ")
    async with served(live_api.hub) as server:
        listener = await Listener(server.base, hdrs).start()
        claims = jwt.decode(token, options={"verify_signature": False})
        async with live_api.hub.sessions() as session:
            await revoke_token(session, claims["jti"])
            await session.commit()
        live_api.hub.tokens.revoked_token(claims["jti"])  # what POST /oauth/revoke does here
        await listener.wait_for(lambda s: s.ended, within=10)
        assert listener.events[-1].event == "close"
        assert listener.events[-1].data == {"reason": "token"}


async def test_shutdown_closes_open_streams_cleanly(live_api) -> None:
    await load_region(live_api.hub)
    async with served(live_api.hub) as server:
        listener = await Listener(server.base, reader(live_api)).start()
        server.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM to a worker does
        # uvicorn raises the signals it handled again once it stopped: not in pytest's process.
        server.server._captured_signals.clear()
        await listener.wait_for(lambda s: s.ended, within=10)
        assert listener.events[-1].event == "close"
        assert listener.events[-1].data == {"reason": "shutdown"}
        await asyncio.wait_for(server.task, 10)  # the server itself stopped, not hung

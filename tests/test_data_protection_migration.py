"""Migration 0004 on a database that already holds events, notifications and a registry (both
engines): columns are only added, so no table is recreated under enforced foreign keys."""

from __future__ import annotations

import sqlalchemy as sa

from renkei.db import create_engine, upgrade


async def test_upgrade_keeps_existing_rows_and_their_index(database_url) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade, "0001")
            for statement in (
                "INSERT INTO event (id, sender_org_id, message_id, event_type, status, "
                "accepted_at, bundle, content_sha256) VALUES ('e1', 'o', 'm', 'admission', "
                "'accepted', '2026-01-01 00:00:00', '{}', 'x')",
                "INSERT INTO notification (id, event_id, recipient, recipient_org_id, "
                "care_team_role, category, priority, patient_id, sent) VALUES ('n1', 'e1', "
                "'Organization/a', 'a', 'pharmacy', 'admission', 'routine', 'p1', "
                "'2026-01-01 00:00:00')",
                "INSERT INTO registry_resource (resource_type, id, version_id, body, "
                "last_updated) VALUES ('Organization', 'o', 1, '{}', '2026-01-01 00:00:00')",
                "INSERT INTO registry_identifier (resource_type, resource_id, system, value) "
                "VALUES ('Organization', 'o', 's', 'v')",
            ):
                await connection.execute(sa.text(statement))
        async with engine.begin() as connection:
            await connection.run_sync(upgrade, "head")
            event = (
                await connection.execute(
                    sa.text("SELECT bundle_sealed, unmatched_reason FROM event")
                )
            ).one()
            assert tuple(event) == (None, None)
            assert await connection.scalar(sa.text("SELECT count(*) FROM notification")) == 1
            assert await connection.scalar(sa.text("SELECT count(*) FROM registry_identifier")) == 1
            assert await connection.scalar(sa.text("SELECT count(*) FROM data_key")) == 0
    finally:
        await engine.dispose()

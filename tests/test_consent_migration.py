"""Migration 0003 on a database that already holds events and notifications (both engines)."""

from __future__ import annotations

import sqlalchemy as sa

from renkei.db import create_engine, upgrade


async def test_existing_notifications_get_full_content_and_no_break_glass(database_url) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade, "0001")
            await connection.execute(sa.text(
                "INSERT INTO event (id, sender_org_id, message_id, event_type, status, "
                "accepted_at, bundle, content_sha256) VALUES ('e1', 'o', 'm', 'admission', "
                "'accepted', '2026-01-01 00:00:00', '{}', 'x')"
            ))  # fmt: skip
            await connection.execute(sa.text(
                "INSERT INTO notification (id, event_id, recipient, recipient_org_id, "
                "care_team_role, category, priority, patient_id, sent) VALUES ('n1', 'e1', "
                "'Organization/a', 'a', 'pharmacy', 'admission', 'routine', 'p1', "
                "'2026-01-01 00:00:00')"
            ))  # fmt: skip
        async with engine.begin() as connection:
            await connection.run_sync(upgrade, "head")
            row = (
                await connection.execute(
                    sa.text("SELECT content, break_glass, reason FROM notification")
                )
            ).one()
            assert (row.content, bool(row.break_glass), row.reason) == ("full", False, None)
            flag = await connection.scalar(sa.text("SELECT break_glass FROM event"))
            assert bool(flag) is False
            reviews = await connection.scalar(sa.text("SELECT count(*) FROM break_glass_review"))
            assert reviews == 0
    finally:
        await engine.dispose()

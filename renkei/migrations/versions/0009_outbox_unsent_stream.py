"""outbox: a partial index of the unsent rows by stream (key, topic), for the relay's claim

A relay claims a row only when no earlier unsent row of the same stream is held by another
relay (one that crashed with its claim in force): that check is a search in this index, which
holds unsent rows only.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UNSENT = sa.text("sent_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_unsent_stream",
            ["key", "topic", "id"],
            unique=False,
            sqlite_where=UNSENT,
            postgresql_where=UNSENT,
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_unsent_stream")

"""outbox: a partial index of the unsent rows by claim expiry, for the relay's claim

A relay claims no row of a stream another relay holds a row of (one that crashed with its
claim in force): the held rows are found in this index, which holds unsent rows only.

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
            "ix_outbox_unsent_claimed",
            ["claimed_until"],
            unique=False,
            sqlite_where=UNSENT,
            postgresql_where=UNSENT,
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_unsent_claimed")

"""priority lanes: the outbox row's lane (urgent | bulk), claimed by a relay loop of its own

Revision ID: 0007
Revises: 0006

Rows already waiting keep flowing: an unsent acute-change row becomes urgent, the rest bulk.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lane", sa.String(length=8), server_default="bulk", nullable=False)
        )
        batch_op.create_index("ix_outbox_lane_pending", ["lane", "sent_at", "id"], unique=False)
    op.execute(
        "UPDATE outbox SET lane = 'urgent' "
        "WHERE sent_at IS NULL AND topic = 'renkei.event.acute-change'"
    )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_lane_pending")
        batch_op.drop_column("lane")

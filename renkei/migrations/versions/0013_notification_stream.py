"""notification stream: each notification's place in the live stream (GET /notifications/stream)

Revision ID: 0013
Revises: 0012

``stream_seq`` is the SSE event id: one global order over every hub process, assigned under a
lock when the router writes the notification (services/notifications/stream.py), so it grows in
commit order and a reader resuming after N misses nothing committed after N. Rows already there
are numbered in the order they were sent.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream_seq", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE notification SET stream_seq = ("
        " SELECT COUNT(*) FROM notification AS earlier"
        " WHERE earlier.sent < notification.sent"
        " OR (earlier.sent = notification.sent AND earlier.id <= notification.id))"
    )
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.create_index("ix_notification_stream_seq", ["stream_seq"], unique=True)
        batch_op.create_index(
            "ix_notification_org_stream", ["recipient_org_id", "stream_seq"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_org_stream")
        batch_op.drop_index("ix_notification_stream_seq")
        batch_op.drop_column("stream_seq")

"""consent decisions, break-glass, minimum necessary

Notification: what it carries (content: full | summary), whether it was delivered under
break-glass, and the routing decision's reason. Event: the break-glass mark. The region
office's reviews of break-glass events.

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-02 03:20:00
"""

import sqlalchemy as sa
from alembic import op

import renkei.db

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


# Plain ALTER TABLE ADD COLUMN / DROP COLUMN, not batch mode: on SQLite a batch recreates the
# table (copy, DROP, rename), and with foreign keys on, dropping ``event`` fails as soon as
# notifications reference it. Adding a column with a constant default needs no copy.


def upgrade() -> None:
    op.add_column(
        "event", sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.create_index("ix_event_break_glass", "event", ["break_glass", "accepted_at"], unique=False)
    op.add_column(
        "notification",
        sa.Column("content", sa.String(length=16), server_default="full", nullable=False),
    )
    op.add_column(
        "notification",
        sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("notification", sa.Column("reason", sa.String(length=40), nullable=True))
    op.create_table(
        "break_glass_review",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("reviewed_at", renkei.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reviewed_by", sa.String(length=140), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["event.id"], name=op.f("fk_break_glass_review_event_id_event")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_break_glass_review")),
    )


def downgrade() -> None:
    op.drop_table("break_glass_review")
    op.drop_column("notification", "reason")
    op.drop_column("notification", "break_glass")
    op.drop_column("notification", "content")
    op.drop_index("ix_event_break_glass", table_name="event")
    op.drop_column("event", "break_glass")

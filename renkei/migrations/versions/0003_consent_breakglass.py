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


def upgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index("ix_event_break_glass", ["break_glass", "accepted_at"], unique=False)

    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("content", sa.String(length=16), server_default="full", nullable=False)
        )
        batch_op.add_column(
            sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("reason", sa.String(length=40), nullable=True))

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
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_column("reason")
        batch_op.drop_column("break_glass")
        batch_op.drop_column("content")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_break_glass")
        batch_op.drop_column("break_glass")

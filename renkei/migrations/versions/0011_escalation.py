"""escalation: timers of unanswered stat acute changes, and escalation steps as notifications

Revision ID: 0011
Revises: 0009

A notification row gains its escalation step (0: routed) and the notification it continues;
an escalation step may notify a recipient the router already notified of the same event, so
the uniqueness becomes (event, recipient, step).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("escalation_step", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("escalation_of", sa.String(length=36), nullable=True))
        batch_op.drop_constraint("uq_notification_event_recipient", type_="unique")
        batch_op.create_unique_constraint(
            "uq_notification_event_recipient_step", ["event_id", "recipient", "escalation_step"]
        )
    op.create_table(
        "escalation",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("notification_id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("due_at", UTC_DATETIME, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["event.id"], name=op.f("fk_escalation_event_id_event")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_escalation")),
        sa.UniqueConstraint("event_id", name=op.f("uq_escalation_event_id")),
    )
    op.create_index("ix_escalation_status_due", "escalation", ["status", "due_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_escalation_status_due", table_name="escalation")
    op.drop_table("escalation")
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_constraint("uq_notification_event_recipient_step", type_="unique")
        batch_op.create_unique_constraint(
            "uq_notification_event_recipient", ["event_id", "recipient"]
        )
        batch_op.drop_column("escalation_of")
        batch_op.drop_column("escalation_step")

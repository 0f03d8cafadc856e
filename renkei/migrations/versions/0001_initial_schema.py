"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 21:44:08.200936
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import renkei.db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "event",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("sender_org_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_key", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("accepted_at", renkei.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("routed_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "bundle",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
        sa.UniqueConstraint("sender_org_id", "message_id", name="uq_event_sender_message"),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_status", ["status"], unique=False)

    op.create_table(
        "patient_key",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_patient_key")),
        sa.UniqueConstraint("key", name=op.f("uq_patient_key_key")),
    )
    op.create_table(
        "registry_resource",
        sa.Column("resource_type", sa.String(length=40), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column(
            "body",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("last_updated", renkei.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "id", name=op.f("pk_registry_resource")),
    )
    op.create_table(
        "notification",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("recipient", sa.String(length=140), nullable=False),
        sa.Column("recipient_org_id", sa.String(length=64), nullable=False),
        sa.Column("care_team_role", sa.String(length=40), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("sent", renkei.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("due_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("read_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("read_by", sa.String(length=140), nullable=True),
        sa.Column("acknowledged_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=140), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"], ["event.id"], name=op.f("fk_notification_event_id_event")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
        sa.UniqueConstraint("event_id", "recipient", name="uq_notification_event_recipient"),
    )
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notification_org_sent", ["recipient_org_id", "sent"], unique=False
        )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("topic", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column(
            "headers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", renkei.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["event.id"], name=op.f("fk_outbox_event_id_event")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_pending", ["sent_at", "id"], unique=False)

    op.create_table(
        "registry_identifier",
        sa.Column("resource_type", sa.String(length=40), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_type", "resource_id"],
            ["registry_resource.resource_type", "registry_resource.id"],
            name=op.f("fk_registry_identifier_resource_type_registry_resource"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "resource_type", "resource_id", "system", "value", name=op.f("pk_registry_identifier")
        ),
    )
    with op.batch_alter_table("registry_identifier", schema=None) as batch_op:
        batch_op.create_index("ix_registry_identifier_lookup", ["system", "value"], unique=False)

    op.create_table(
        "registry_reference",
        sa.Column("resource_type", sa.String(length=40), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_type", "resource_id"],
            ["registry_resource.resource_type", "registry_resource.id"],
            name=op.f("fk_registry_reference_resource_type_registry_resource"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "resource_type", "resource_id", "name", "target", name=op.f("pk_registry_reference")
        ),
    )
    with op.batch_alter_table("registry_reference", schema=None) as batch_op:
        batch_op.create_index(
            "ix_registry_reference_lookup", ["resource_type", "name", "target"], unique=False
        )

    op.create_table(
        "suppressed_delivery",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("recipient", sa.String(length=140), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("decided_at", renkei.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["event.id"], name=op.f("fk_suppressed_delivery_event_id_event")
        ),
        sa.PrimaryKeyConstraint("event_id", "recipient", name=op.f("pk_suppressed_delivery")),
    )


def downgrade() -> None:

    op.drop_table("suppressed_delivery")
    with op.batch_alter_table("registry_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_registry_reference_lookup")

    op.drop_table("registry_reference")
    with op.batch_alter_table("registry_identifier", schema=None) as batch_op:
        batch_op.drop_index("ix_registry_identifier_lookup")

    op.drop_table("registry_identifier")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_pending")

    op.drop_table("outbox")
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_org_sent")

    op.drop_table("notification")
    op.drop_table("registry_resource")
    op.drop_table("patient_key")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_status")

    op.drop_table("event")

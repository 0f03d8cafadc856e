"""audit trail: the chained audit records and their signed checkpoints; outbox rows without an
event (the audit records travel through the outbox too)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("event_id", existing_type=sa.String(length=36), nullable=True)
    op.create_table(
        "audit_record",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("recorded", UTC_DATETIME, nullable=False),
        sa.Column("stored_at", UTC_DATETIME, nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("outcome", sa.String(length=2), nullable=False),
        sa.Column("agent_org", sa.String(length=64), nullable=False),
        sa.Column("agent_role", sa.String(length=20), nullable=False),
        sa.Column("agent_practitioner", sa.String(length=64), nullable=True),
        sa.Column("agent_client", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("source_org", sa.String(length=64), nullable=True),
        sa.Column("entity_refs", sa.String(length=2000), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_record")),
        sa.UniqueConstraint("id", name=op.f("uq_audit_record_id")),
    )
    with op.batch_alter_table("audit_record", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_record_patient_recorded", ["patient_id", "recorded"], unique=False
        )
        batch_op.create_index(
            "ix_audit_record_agent_org_recorded", ["agent_org", "recorded"], unique=False
        )
        batch_op.create_index(
            "ix_audit_record_source_org_recorded", ["source_org", "recorded"], unique=False
        )
        batch_op.create_index("ix_audit_record_recorded", ["recorded"], unique=False)
        batch_op.create_index(
            "ix_audit_record_action_recorded", ["action", "recorded"], unique=False
        )
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("previous_id", sa.Integer(), nullable=True),
        sa.Column("previous_signature", sa.String(length=200), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoint")),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoint")
    op.drop_table("audit_record")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("event_id", existing_type=sa.String(length=36), nullable=False)

"""data protection: data keys, sealed bodies and bundles, forgotten patients, unmatched reasons

Revision ID: 0004
Revises: 0001

Patient data is stored sealed from here on (``body_sealed``, ``bundle_sealed``); the clear
columns become nullable and new rows leave them empty. The pseudonymous patient key is an HMAC
now (no table). Rows written in clear by an earlier hub are still read (and are re-sealed when
rewritten); a region moving from a clear database should start from a fresh one.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import renkei.db

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "data_key",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("kek_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", renkei.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_key")),
        sa.UniqueConstraint("patient_id", name=op.f("uq_data_key_patient_id")),
    )
    with op.batch_alter_table("registry_resource", schema=None) as batch_op:
        batch_op.alter_column("body", existing_type=JSON, nullable=True)
        batch_op.add_column(sa.Column("body_sealed", sa.LargeBinary(), nullable=True))
        batch_op.add_column(
            sa.Column("forgotten_at", renkei.db.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.alter_column("bundle", existing_type=JSON, nullable=True)
        batch_op.add_column(sa.Column("bundle_sealed", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("unmatched_reason", sa.String(length=32), nullable=True))
    op.drop_table("patient_key")


def downgrade() -> None:
    op.create_table(
        "patient_key",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_patient_key")),
        sa.UniqueConstraint("key", name=op.f("uq_patient_key_key")),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_column("unmatched_reason")
        batch_op.drop_column("bundle_sealed")
    with op.batch_alter_table("registry_resource", schema=None) as batch_op:
        batch_op.drop_column("forgotten_at")
        batch_op.drop_column("body_sealed")
    op.drop_table("data_key")

"""data protection: data keys, sealed bodies and bundles, forgotten patients, unmatched reasons

Revision ID: 0004
Revises: 0003

Patient data is stored sealed from here on (``body_sealed``, ``bundle_sealed``); new rows leave
the clear columns an empty JSON object. Columns are only added, never altered: on SQLite an
altered column recreates the table, and dropping ``event`` or ``registry_resource`` under
enforced foreign keys would fail (or cascade into the index rows). The pseudonymous patient key is an HMAC
now (no table). Rows written in clear by an earlier hub are still read (and are re-sealed when
rewritten); a region moving from a clear database should start from a fresh one.
"""

import sqlalchemy as sa
from alembic import op

import renkei.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


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
    op.add_column("registry_resource", sa.Column("body_sealed", sa.LargeBinary(), nullable=True))
    op.add_column(
        "registry_resource",
        sa.Column("forgotten_at", renkei.db.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column("event", sa.Column("bundle_sealed", sa.LargeBinary(), nullable=True))
    op.add_column("event", sa.Column("unmatched_reason", sa.String(length=32), nullable=True))
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

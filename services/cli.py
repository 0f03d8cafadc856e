"""The ``renkei`` command line: ``up``, ``token issue``, ``worker``, ``demo``, ``patient forget``,
``keys rotate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from renkei.settings import get_settings
from services.auth.service import Role, issue_token


def cmd_up(_args: argparse.Namespace) -> int:
    import uvicorn

    from renkei.hub import Hub
    from services import logs
    from services.app import create_app

    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(Hub(settings), manage_hub=True)
    print(f"Renkei Hub 連携ハブ: http://{settings.host}:{settings.port} (Ctrl-C で停止 / to stop)")
    logs.install()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    settings = get_settings()
    print(
        issue_token(
            settings.keys_dir,
            args.org,
            Role(args.role),
            args.practitioner,
            ttl_seconds=args.ttl or settings.token_ttl_seconds,
        )
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker without the HTTP surface: scale relays and routers as processes of their own."""
    from consumers.routing.router import run_router
    from producers.relay import run_relay
    from renkei.hub import Hub

    if not get_settings().kafka_bootstrap:
        print("renkei worker needs RENKEI_KAFKA_BOOTSTRAP (the hub's cluster)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = {"relay": run_relay, "router": run_router}[args.name]

    async def serve() -> None:
        hub = Hub(get_settings())
        await hub.start(workers=False)
        try:
            await worker(hub)
        finally:
            await hub.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_patient_forget(args: argparse.Namespace) -> int:
    """Crypto-shred one patient, against the hub's database and keys (same data dir)."""
    from renkei.db import migrate
    from renkei.hub import Hub
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
                return await forget_patient(session, args.patient_id)
        finally:
            await hub.engine.dispose()

    if not asyncio.run(forget()):
        print("no such Patient in the registry", file=sys.stderr)
        return 1
    print(f"forgotten: Patient/{args.patient_id}")
    return 0


def cmd_keys_rotate(_args: argparse.Namespace) -> int:
    """A new KEK for new data keys, then every existing data key re-wrapped under it."""
    from renkei.crypto import rewrap_all
    from renkei.db import migrate
    from renkei.hub import Hub

    async def rotate() -> tuple[str, int]:
        hub = Hub(get_settings())
        try:
            await migrate(hub.engine)
            kek_id = hub.keyring.kek.rotate()
            print(f"new key-encryption key {kek_id}; re-wrapping data keys", flush=True)
            async with hub.sessions() as session:
                done = await rewrap_all(
                    session, hub.keyring, progress=lambda n: print(f"  {n} re-wrapped", flush=True)
                )
            return kek_id, done
        finally:
            await hub.engine.dispose()

    kek_id, done = asyncio.run(rotate())
    print(f"done: {done} data keys now under {kek_id} (older KEK files may be archived)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(args.url or f"http://{get_settings().host}:{get_settings().port}", args.timeout)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="renkei", description="Renkei Hub 連携ハブ")
    commands = root.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole hub in one process")
    up.set_defaults(func=cmd_up)

    token = commands.add_parser("token", help="bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="print a token signed by the hub's key")
    issue.add_argument("--org", required=True, help="Organization id")
    issue.add_argument("--role", required=True, choices=[r.value for r in Role])
    issue.add_argument("--practitioner", help="Practitioner or PractitionerRole id")
    issue.add_argument("--ttl", type=int, help="lifetime in seconds")
    issue.set_defaults(func=cmd_token_issue)

    worker = commands.add_parser("worker", help="run one worker (relay or router) on its own")
    worker.add_argument("name", choices=["relay", "router"])
    worker.set_defaults(func=cmd_worker)

    patient = commands.add_parser("patient", help="registry patients")
    patient_commands = patient.add_subparsers(dest="patient_command", required=True)
    forget = patient_commands.add_parser(
        "forget", help="destroy a patient's data keys (crypto-shredding; cannot be undone)"
    )
    forget.add_argument("patient_id", help="the registry Patient id")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    forget.set_defaults(func=cmd_patient_forget)

    keys = commands.add_parser("keys", help="encryption keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_commands.add_parser(
        "rotate", help="new key-encryption key; re-wrap every data key under it"
    )
    rotate.set_defaults(func=cmd_keys_rotate)

    demo = commands.add_parser("demo", help="load the demo region and post one event of each type")
    demo.add_argument("--url", help="the hub's base URL (default: from the settings)")
    demo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for delivery")
    demo.set_defaults(func=cmd_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # keys, tokens' key and database files it creates are the hub's alone
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

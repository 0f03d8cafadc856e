"""The ``renkei`` command line: ``up``, ``token issue``, ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys

from renkei.settings import get_settings
from services.auth.service import Role, issue_token


def cmd_up(_args: argparse.Namespace) -> int:
    import uvicorn

    from renkei.hub import Hub
    from services.app import create_app

    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(Hub(settings), manage_hub=True)
    print(f"Renkei Hub 連携ハブ: http://{settings.host}:{settings.port} (Ctrl-C で停止 / to stop)")
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
    import asyncio

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

    demo = commands.add_parser("demo", help="load the demo region and post one event of each type")
    demo.add_argument("--url", help="the hub's base URL (default: from the settings)")
    demo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for delivery")
    demo.set_defaults(func=cmd_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The `gradecast` command."""

import argparse
import asyncio
import sys

from services.core.settings import Settings
from services.logs import configure_logging

PUBLISHER_PORT, STREAM_PORT = 8000, 8001


def run_publisher(args: argparse.Namespace) -> None:
    from services.publisher.app import create_app
    from services.web.server import serve

    settings = Settings()
    serve(lambda: create_app(settings), settings, args.port or settings.PORT or PUBLISHER_PORT)


def run_stream(args: argparse.Namespace) -> None:
    from services.stream.app import create_app
    from services.web.server import serve

    settings = Settings(NODE_ID=args.node_id) if args.node_id else Settings()
    serve(lambda: create_app(settings), settings, args.port or settings.PORT or STREAM_PORT)


def run_retention(args: argparse.Namespace) -> None:
    from services.retention.worker import run

    purged = asyncio.run(run(Settings(), once=args.once))
    if args.once:
        print(f"purged {purged} notifications")


def run_migrate(args: argparse.Namespace) -> None:
    from services.core.migrate import migrate

    migrate(Settings().DATABASE_URL)
    print("database is at the latest migration")


def run_token(args: argparse.Namespace) -> None:
    from services.core.tokens import mint_token

    settings = Settings()
    settings.require("GRADECAST_JWT_SECRET")
    assert settings.GRADECAST_JWT_SECRET is not None
    secret = settings.GRADECAST_JWT_SECRET.get_secret_value()
    print(mint_token(args.student_id, secret, args.ttl_seconds, args.tenant))


def run_keys(args: argparse.Namespace) -> None:
    from services.keys_cli import run

    sys.exit(asyncio.run(run(Settings(), args)))


def run_dev(args: argparse.Namespace) -> None:
    from services.dev import run

    sys.exit(run(publisher_port=args.port, stream_ports=args.stream_ports))


def parser() -> argparse.ArgumentParser:
    from services.client_cli import add_commands
    from services.loadtest.cli import add_commands as add_loadtest_commands

    root = argparse.ArgumentParser(
        prog="gradecast", description="Real-time grade notifications over Server-Sent Events."
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    publisher = commands.add_parser("publisher", help="run the publish API")
    publisher.add_argument("--port", type=int, help=f"default: PORT or {PUBLISHER_PORT}")
    publisher.set_defaults(run=run_publisher)

    stream = commands.add_parser("stream", help="run a stream node")
    stream.add_argument("--port", type=int, help=f"default: PORT or {STREAM_PORT}")
    stream.add_argument("--node-id", help="default: NODE_ID, or host name and pid")
    stream.set_defaults(run=run_stream)

    retention = commands.add_parser("retention", help="purge expired notifications")
    retention.add_argument("--once", action="store_true", help="one pass, print the count")
    retention.set_defaults(run=run_retention)

    migrate = commands.add_parser("migrate", help="create the database and upgrade it")
    migrate.set_defaults(run=run_migrate)

    token = commands.add_parser("token", help="mint a student token for development")
    token.add_argument("student_id")
    token.add_argument("--ttl-seconds", type=float, default=24 * 3600)
    token.add_argument("--tenant", help="the student's school (default: the default tenant)")
    token.set_defaults(run=run_token)

    keys = commands.add_parser("keys", help="manage publisher API keys")
    key_commands = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key and print it, once")
    create.add_argument("--name", required=True, help="which gradebook it is for")
    create.add_argument("--tenant", default="default", help="the school it publishes for")
    key_commands.add_parser("list", help="list keys (never the keys themselves)")
    revoke = key_commands.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("key_id", type=int)
    keys.set_defaults(run=run_keys)

    dev = commands.add_parser("dev", help="run everything locally")
    dev.add_argument("--port", type=int, default=PUBLISHER_PORT, help="the publisher's port")
    dev.add_argument("--stream-ports", type=int, nargs="+", default=[STREAM_PORT, STREAM_PORT + 1])
    dev.set_defaults(run=run_dev)
    add_commands(commands)
    add_loadtest_commands(commands)
    return root


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    try:
        args = parser().parse_args(argv)
        args.run(args)
    except KeyboardInterrupt:  # Ctrl-C before a command handles it itself: no traceback
        sys.exit(130)


if __name__ == "__main__":
    main()

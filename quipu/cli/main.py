"""`quipu`: run a shard, a router or an ingest front; make tokens.

    quipu shard serve CONFIG     run one shard from a JSON or YAML config (docs/config.md)
    quipu router serve CONFIG    run the cluster's query router (configs come from quipu-cluster)
    quipu ingest serve CONFIG    run one worker of the cluster's write front
    quipu token new              print a new token and the `sha256:` line for a config

Errors are one line on stderr and a non-zero exit; no traceback for a bad config.
"""

import argparse
import sys
from pathlib import Path

from quipu.core.errors import QuipuError

PROCESSES = {
    "shard": "one shard: the v1 HTTP API over one store",
    "router": "the cluster's router: query fan-out, merge, anchors",
    "ingest": "one ingest worker: tenant-scoped writes to the owning shard",
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except QuipuError as err:
        print(f"quipu: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        print(f"quipu: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quipu", description="Quipu tamper-evident audit log")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for name, what in PROCESSES.items():
        process = commands.add_parser(name, help=f"run {what}").add_subparsers(
            required=True, metavar="ACTION"
        )
        serve = process.add_parser("serve", help=f"serve {what} until SIGTERM")
        serve.add_argument("config", type=Path, help="config file (JSON or YAML)")
        serve.set_defaults(run=_serve, process=name)
    token = commands.add_parser("token", help="tokens").add_subparsers(required=True, metavar="ACTION")
    new = token.add_parser("new", help="print a new token once and its sha256: line for the config")
    new.add_argument("--role", default="admin", help="role to put in the printed config line")
    new.set_defaults(run=_token_new)
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Imported here: `quipu token new` should not pay for loading aiohttp."""
    from importlib import import_module

    from quipu.shard.serve import configure_logging

    configure_logging()
    import_module(f"quipu.{args.process}.serve").serve(args.config)
    return 0


def _token_new(args: argparse.Namespace) -> int:
    from quipu.shard.auth import new_token, token_digest

    token = new_token()
    print(f"token (shown once, keep it secret): {token}")
    print(f'config line for auth.tokens:  "{token_digest(token)}": {args.role}')
    return 0


if __name__ == "__main__":
    sys.exit(main())

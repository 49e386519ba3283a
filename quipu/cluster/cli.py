"""`quipu-cluster`: run and operate the cluster of one cluster.yaml (docs/cluster.md).

    quipu-cluster up [CLUSTER_YAML] [--detach]     start and supervise every process
    quipu-cluster down [CLUSTER_YAML]              flush and stop a running cluster
    quipu-cluster status [CLUSTER_YAML]            one line per shard and process
    quipu-cluster grow [CLUSTER_YAML] --add K      add K shards (a new generation)
    quipu-cluster verify [CLUSTER_YAML]            integrity, anchors, consistency, map
    quipu-cluster anchor [CLUSTER_YAML]            sign a cross-shard anchor now
    quipu-cluster token [CLUSTER_YAML] --tenant T --role R [--expires TIME]

Errors are one line on stderr (`quipu-cluster: <what>`) and a non-zero exit; `verify`
exits 1 when it finds a problem. Admin calls take the token from QUIPU_TOKEN, never argv.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from quipu.cluster import bootstrap, grow, report
from quipu.cluster.config import ClusterConfig, load_cluster_config
from quipu.cluster.daemon import (
    UP_PREFIX,
    already_running,
    detach,
    running_supervisor,
    stop_supervisor,
    supervisor_argv,
)
from quipu.cluster.preflight import check_ports, check_store_locks
from quipu.cluster.tokens import issue_token, token_entry
from quipu.core.errors import BadInput, Conflict, QuipuError

DEFAULT_CONFIG = "cluster.yaml"
PROBLEMS_FOUND = 1
FAILED = 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except QuipuError as err:
        print(f"quipu-cluster: {err}", file=sys.stderr)
        return FAILED
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        print(f"quipu-cluster: {err.strerror or err}{where}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quipu-cluster", description="Run and operate a Quipu cluster")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument(
            "config", nargs="?", default=DEFAULT_CONFIG, help="cluster.yaml (default: %(default)s)"
        )
        sub.set_defaults(run=run)
        return sub

    up = command("up", _up, "start every process of the cluster and supervise them")
    up.add_argument("--detach", action="store_true", help="run the supervisor in the background")
    up.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)  # what --detach runs
    command("down", _down, "flush every shard and stop the cluster")
    command("status", _status, "show every shard and process")
    add = command("grow", _grow, "add shards: a new generation; the old active shards are frozen")
    add.add_argument("--add", type=int, required=True, metavar="K", help="how many shards to add")
    command("verify", _verify, "check every shard, anchor signature, consistency proof and the map")
    command("anchor", _anchor, "sign a cross-shard anchor now")
    token = command("token", _token, "issue a token (printed once; only its sha256 is stored)")
    token.add_argument("--tenant", required=True, help='the tenant it is bound to, or "*" for all')
    token.add_argument("--role", required=True, help="a role of tokens.grants (e.g. service, auditor)")
    token.add_argument("--expires", help="RFC 3339 time (2027-01-01T00:00:00Z) after which it is refused")
    return parser


# --- up / down -----------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    config = load_cluster_config(Path(args.config))
    pid = running_supervisor(config)
    if pid is not None:
        raise Conflict(already_running(config.data_dir, pid))
    shard_map = bootstrap.planned_map(config)
    check_ports(config, shard_map)
    check_store_locks(config, shard_map)
    bootstrap.check(config)
    first = bootstrap.generate(config)
    if not args.supervise:
        _report_first_run(config, first)
    hint = _TokenHint(config, first.admin_token)
    try:
        if args.detach:
            print(detach(config, supervisor_argv(args.config)), flush=True)
            hint.show()
            return 0
        return _supervise(config, None if args.supervise else hint)
    finally:
        if hint.token and not hint.shown:
            hint.show()  # an up that failed after making the admin token must not lose it


def _report_first_run(config: ClusterConfig, first: bootstrap.FirstRun) -> None:
    made = [path for path in first.generated if path != config.shard_map_path]
    if made:
        print(f"first run: generated {', '.join(_shown(p) for p in made)}")
    if config.shard_map_path in first.generated:
        print(f"created {_shown(config.shard_map_path)} from {config.shown} (from now on, the shard map)")


class _TokenHint:
    """How to get a token, printed once: the new admin token on a first run, else how to
    issue one. The admin token exists nowhere else (only its digest is stored)."""

    def __init__(self, config: ClusterConfig, token: str | None) -> None:
        self.config, self.token, self.shown = config, token, False

    def show(self) -> None:
        if self.shown:
            return
        self.shown = True
        if self.token:
            print(f"admin token (shown once; only its sha256 is kept in {_shown(self.config.tokens_file)}):")
            print(f"  export QUIPU_TOKEN={self.token}")
        else:
            print("tokens: use `quipu-cluster token --tenant TENANT --role ROLE` to issue one")
        sys.stdout.flush()


def _supervise(config: ClusterConfig, hint: _TokenHint | None) -> int:
    """The supervisor in this process. `hint` is None when this is the background process
    of `up --detach`: then the terminal's `up` prints the hint and stdout is a log file."""
    from quipu.cluster.supervisor import Supervisor  # the CLI's other commands need none of it

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def on_up() -> None:
        print(f"{UP_PREFIX}{config.public_url} (router {config.router_url}, data in {config.data_dir})")
        if hint is not None:
            hint.show()
            print("stop with Ctrl-C or `quipu-cluster down`")
        sys.stdout.flush()

    return Supervisor(config).run(on_up)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _down(args: argparse.Namespace) -> int:
    config = load_cluster_config(Path(args.config))
    pid = stop_supervisor(config)
    if pid is None:
        print(f"quipu-cluster: no cluster is running from {config.data_dir}")
    else:
        print(f"quipu-cluster: stopped (supervisor pid {pid}); every shard was flushed first")
    return 0


# --- operating -----------------------------------------------------------------------------


def _grow(args: argparse.Namespace) -> int:
    config = load_cluster_config(Path(args.config))
    grown = grow.add_pending(config, args.add)
    if running_supervisor(config) is None:
        committed = grow.commit(config, grown.pending)
        if committed is None:
            raise Conflict("the pending shards changed while committing; run grow again")
        print("no supervisor running: committed now; the new shards start (empty) on the next up")
    else:
        print(f"waiting for the supervisor to start {', '.join(p.id for p in grown.pending)} ...", flush=True)
        committed = grow.wait_for_commit(
            config, grown.pending, lambda: running_supervisor(config) is not None
        )
    print("\n".join(grow.describe(committed)))
    if running_supervisor(config) is not None and os.environ.get(report.TOKEN_ENV):
        try:  # the supervisor asks too; an anchor right after the commit pins the new map
            print("\n".join(["anchored the new map:", *report.anchor(config)]))
        except QuipuError as err:
            print(f"quipu-cluster: no anchor now ({err}); the router signs one periodically", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    config = load_cluster_config(Path(args.config))
    lines, ok = report.status(config)
    print("\n".join(lines))
    return 0 if ok else PROBLEMS_FOUND


def _verify(args: argparse.Namespace) -> int:
    config = load_cluster_config(Path(args.config))
    lines, ok = report.verify(config)
    print("\n".join(lines))
    return 0 if ok else PROBLEMS_FOUND


def _anchor(args: argparse.Namespace) -> int:
    config = load_cluster_config(Path(args.config))
    print("\n".join(report.anchor(config)))
    return 0


def _token(args: argparse.Namespace) -> int:
    config = load_cluster_config(Path(args.config))
    if args.role not in config.grants:
        raise BadInput(f"--role: {args.role!r} is not a role of tokens.grants ({', '.join(config.grants)})")
    entry = token_entry(args.role, args.tenant, args.expires)
    token, line = issue_token(config.tokens_file, entry)
    print(f"token (shown once, keep it secret): {token}")
    print(f"added to {_shown(config.tokens_file)}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

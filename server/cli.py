"""The `raftstore` command: run a node, or a local cluster.

raftstore server --config FILE
raftstore cluster start [--nodes 3] [--data ./data] [--base-port 3000]
                        [--hosts A,B,C] [--netns NAME] [--gids G1,G2,G3]
raftstore cluster start-node --node nN [--data ./data]
raftstore cluster status [--data ./data] [--json]
raftstore cluster stop [--data ./data]

`--hosts`, `--netns` and `--gids` serve the checker (jepsen_like), which runs each node on
its own loopback address inside a network namespace of its own; see server/launcher.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import structlog

from raftstore import logs
from server import launcher
from server.config import ConfigError, load

log = structlog.get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftstore", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="run one node in the foreground")
    server.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    cluster = commands.add_parser("cluster", help="a local cluster under one data directory")
    actions = cluster.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start the nodes and wait until stable")
    start.add_argument("--nodes", type=int, default=3)
    start.add_argument("--base-port", type=int, default=3000)
    start.add_argument(
        "--hosts", type=_texts, help="one listen address per node (default 127.0.0.1 for all)"
    )
    start.add_argument("--netns", help="run every node under `ip netns exec NETNS`")
    start.add_argument("--gids", type=_ints, help="one group id per node to run it with")
    start_node = actions.add_parser("start-node", help="start one node of the cluster, no wait")
    start_node.add_argument("--node", required=True, help="its id: n1, n2, ...")
    for action in (start, start_node, actions.add_parser("status"), actions.add_parser("stop")):
        action.add_argument("--data", type=Path, default=Path("data"))
        if action.prog.endswith("status"):
            action.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args(argv)
    try:
        if args.command == "server":
            return run_server(args.config)
        return run_cluster(args)
    except (ConfigError, launcher.LauncherError) as exc:
        sys.stderr.write(f"raftstore: {exc}\n")
        return 2


def run_server(config_path: Path) -> int:
    config = load(config_path)
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        logs.configure(json=True, stream=config.log_file.open("a", encoding="utf-8", buffering=1))
    else:
        logs.configure(json=not sys.stderr.isatty())
    # The heavy imports (lmdb, pysyncobj) only after the config is known to be good.
    from server.listener import run  # noqa: PLC0415
    from server.node import Node  # noqa: PLC0415

    node = Node(config)
    node.start()

    async def until_signalled() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()

    try:
        asyncio.run(run(node, until_signalled))
    finally:
        node.stop()
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    data: Path = args.data
    if args.action == "start":
        if not 1 <= args.nodes <= 9:
            raise launcher.LauncherError("--nodes must be 1..9")
        nodes = launcher.start(
            data, args.nodes, args.base_port, hosts=args.hosts, netns=args.netns, gids=args.gids
        )
        hosts = ", ".join(f"{n.host}:{n.port}" for n in nodes)
        sys.stdout.write(
            f"raftstore: {len(nodes)} nodes running from {data}/ ({hosts})\n"
            f"connect:   client.connect(json.load(open('{data}/cluster.json')))  (Python SDK)\n"
            f"status:    raftstore cluster status --data {data}\n"
            f"stop:      raftstore cluster stop --data {data}\n"
        )
        return 0
    if args.action == "start-node":
        pid = launcher.start_node(data, args.node)
        sys.stdout.write(f"raftstore: started {args.node} (pid {pid})\n")
        return 0
    if args.action == "status":
        rows = launcher.status(data)
        if not rows:
            raise launcher.LauncherError(f"no cluster in {data}")
        if args.json:
            sys.stdout.write(json.dumps({"nodes": rows}, indent=2) + "\n")
            return 0
        sys.stdout.write(f"{'node':<6}{'pid':>8}  {'state':<8}{'listen':<18}leads\n")
        for row in rows:
            state = "up" if row["alive"] else "down"
            listen = f"{row['listen'][0]}:{row['listen'][1]}"
            leads = ", ".join(row["leads"]) or "-"
            sys.stdout.write(
                f"{row['id']:<6}{row['pid'] or '-':>8}  {state:<8}{listen:<18}{leads}\n"
            )
        return 0
    stopped = launcher.stop(data)
    sys.stdout.write(f"raftstore: stopped {', '.join(stopped) or 'nothing'}\n")
    return 0


def _texts(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _texts(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ints"
        ) from None


if __name__ == "__main__":
    sys.exit(main())

"""A real Redis Cluster of 3 masters on loopback ports, for ``make test-cluster`` (docs/operations.md#redis-cluster).

Each node is a ``redis-server --cluster-enabled yes`` with its own data directory (AOF on, ``noeviction``:
what the buffer's system checks ask of every master); ``redis-cli --cluster create … --cluster-replicas 0``
joins them and spreads the 16384 slots (without ``redis-cli``, the same is done with CLUSTER MEET and
CLUSTER ADDSLOTS). The script waits until every node reports ``cluster_state:ok``.

Usage:
  python scripts/redis_cluster.py run [--dir D] -- CMD ...   start, run CMD with BUFFER_REDIS_URL set to the
                                                              cluster, stop and clean up (also on failure or ^C);
                                                              exits with CMD's status
  python scripts/redis_cluster.py start [--dir D]            start, print the BUFFER_REDIS_URL line, leave it running
  python scripts/redis_cluster.py stop [--dir D]             stop the nodes started in D and delete D
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".data" / "redis-cluster"
MASTERS = 3
SLOTS = 16384
READY_WAIT_S = 30.0


@dataclass(frozen=True)
class Node:
    port: int
    pid: int


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_node_port(taken: set[int]) -> int:
    """A port P with P and its cluster bus port P + 10000 both free (the bus port is fixed at +10000 before
    Redis 7, and ``cluster-port`` is not needed then)."""
    for _ in range(1000):
        port = random.randrange(20000, 45000)
        if port not in taken and port + 10000 not in taken and _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free pair of loopback ports for a cluster node")


def url_of(ports: list[int]) -> str:
    """The buffer URL of the cluster: any one node is enough, redis-py discovers the others."""
    return f"redis+cluster://127.0.0.1:{ports[0]}/0"


def start(base: Path, masters: int = MASTERS) -> list[Node]:
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server is not on PATH (scripts/provision.sh installs it)")
    if (base / "nodes.json").exists():
        stop(base)
    base.mkdir(parents=True, exist_ok=True)
    nodes: list[Node] = []
    taken: set[int] = set()
    try:
        for _ in range(masters):
            port = _free_node_port(taken)
            taken |= {port, port + 10000}
            data = base / str(port)
            data.mkdir()
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(data / "nodes.conf"), "--cluster-node-timeout", "5000",
                 "--dir", str(data), "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction",
                 "--daemonize", "no", "--logfile", str(data / "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            nodes.append(Node(port, proc.pid))
            (base / "nodes.json").write_text(json.dumps([n.__dict__ for n in nodes]))
        for node in nodes:
            _wait(lambda n=node: _client(n.port).ping(), f"node {node.port} did not answer")
        _create(nodes)
        _wait(lambda: all(_cluster_ok(n.port) for n in nodes), "cluster_state did not become ok")
    except BaseException:
        stop(base)
        raise
    return nodes


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2, decode_responses=True)


def _wait(ready, what: str) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {READY_WAIT_S:.0f} s")
        time.sleep(0.05)


def _cluster_ok(port: int) -> bool:
    info = _client(port).cluster("INFO")
    text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in info.items())
    return "cluster_state:ok" in text and f"cluster_slots_ok:{SLOTS}" in text


def _create(nodes: list[Node]) -> None:
    """Join the nodes and spread the slots: ``redis-cli --cluster create``, else MEET + ADDSLOTS."""
    addresses = [f"127.0.0.1:{n.port}" for n in nodes]
    cli = shutil.which("redis-cli")
    if cli:
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return
    per = SLOTS // len(nodes)
    for i, node in enumerate(nodes):
        last = SLOTS - 1 if i == len(nodes) - 1 else (i + 1) * per - 1
        _client(node.port).execute_command("CLUSTER ADDSLOTS", *range(i * per, last + 1))
    for node in nodes[1:]:
        _client(node.port).execute_command("CLUSTER MEET", "127.0.0.1", nodes[0].port)


def stop(base: Path) -> None:
    """SIGTERM every node started in ``base`` (by its pid, and only if it still is a redis-server), then
    delete ``base``."""
    state = base / "nodes.json"
    nodes = [Node(**n) for n in json.loads(state.read_text())] if state.exists() else []
    for node in nodes:
        if _is_redis(node.pid):
            os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for node in nodes:
        while _is_redis(node.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_redis(node.pid):
            os.kill(node.pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def _is_redis(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "start", "stop"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="data directory of the nodes")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if args.action == "stop":
        stop(args.dir)
        return 0
    started = time.monotonic()
    nodes = start(args.dir)
    url = url_of([n.port for n in nodes])
    print(f"redis cluster: {len(nodes)} masters on {', '.join(str(n.port) for n in nodes)} "
          f"ready in {time.monotonic() - started:.1f} s; BUFFER_REDIS_URL={url}", flush=True)  # fmt: skip
    if args.action == "start":
        return 0
    if not command:
        stop(args.dir)
        parser.error("run needs a command after --")
    # SIGTERM (make killed, CI cancelled) becomes an exception, so the finally below stops the nodes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return subprocess.run(command, env={**os.environ, "BUFFER_REDIS_URL": url}).returncode
    finally:
        stop(args.dir)
        print("redis cluster: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())

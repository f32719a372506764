"""A small userspace TCP proxy that adds round trips and faults to a link (docs/operations.md#deploying-on-several-hosts).

This kernel has no ``netem`` qdisc, so delay cannot be put on an interface: the processes of the host
topology (scripts/hosts.py) reach Redis and Postgres through this proxy instead, one listening port per
link (e.g. "drain1 → redis"). Each link has:

- ``rtt_ms``: added round-trip time, half on each direction, plus ``jitter_ms`` (uniform, per chunk, order kept);
- ``drop``: the share of new connections reset at once (a userspace proxy cannot lose single TCP segments:
  the kernel would resend them, so losing a connection is the nearest fault it can make);
- ``cut``: a partition. Bytes already read are held, nothing more is read or delivered, and new connections
  are accepted but not forwarded — as a link that silently stops carrying packets looks to both ends (no
  RST, no FIN: each side waits for its own timeout). ``heal`` delivers what was held and carries on, as
  TCP's retransmissions would after a short partition. ``reset`` closes every connection of the link now.
  ``cut_after`` arms a cut at an exact point: the first client chunk containing the given bytes (e.g.
  ``COMMIT``) is delivered upstream, then the link is cut, so the server acts on it and its reply is held —
  an ambiguous commit, which a timed cut can only hit by luck. ``cut_before`` is the same but holds that
  chunk too: the server never sees it until the heal (a drain's ack, held past its lease).

Threads, not asyncio: asyncio's timers round up to whole milliseconds, too coarse for a 0.25 ms one-way
delay; ``time.sleep`` here wakes within about 0.1 ms. Run as a child process (``NetProxy`` below) so that
its threads never share an interpreter lock with the test or benchmark that drives it. Commands are JSON
lines on stdin, one JSON reply line each on stdout.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

CHUNK = 65536


@dataclass
class Link:
    name: str
    listen: tuple[str, int]
    upstream: tuple[str, int]
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0
    open: threading.Event = field(default_factory=threading.Event)
    conns: set[socket.socket] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: int = 0
    dropped: int = 0
    carried: int = 0  # bytes
    cut_after: bytes = b""  # armed by the "cut_after" command; cleared when it fires
    cut_before: bytes = b""  # armed by the "cut_before" command; cleared when it fires
    cuts_fired: int = 0
    flights: int = 0  # client chunks carried upstream: about one per round trip (a pipeline is one)

    def one_way_s(self) -> float:
        return (self.rtt_ms / 2 + (random.uniform(0, self.jitter_ms) if self.jitter_ms else 0.0)) / 1000


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _pipe(link: Link, src: socket.socket, dst: socket.socket, done: threading.Event, *, upstream: bool) -> None:
    """Carry ``src`` → ``dst`` with the link's one-way delay: a reader thread stamps each chunk with its due
    time (never earlier than the chunk before: bytes keep their order), a writer sleeps until it is due."""
    queue: collections.deque[tuple[float, bytes, bool]] = collections.deque()
    ready = threading.Condition()

    def reader() -> None:
        last_due = 0.0
        try:
            while True:
                data = src.recv(CHUNK)
                link.open.wait()  # a cut: stop reading, as a partitioned peer's packets stop arriving
                due = max(last_due, time.monotonic() + link.one_way_s()) if data else last_due
                last_due = due
                if upstream and data:
                    link.flights += 1
                if upstream and link.cut_before and link.cut_before in data:
                    link.cut_before = b""
                    link.open.clear()  # queued below, so the writer holds it until the heal
                    link.cuts_fired += 1
                trigger = upstream and bool(link.cut_after) and link.cut_after in data
                if trigger:
                    link.cut_after = b""
                with ready:
                    queue.append((due, data, trigger))
                    ready.notify()
                if not data:
                    return
        except OSError:
            with ready:
                queue.append((last_due, b"", False))
                ready.notify()

    threading.Thread(target=reader, daemon=True).start()
    try:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data, trigger = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not trigger:
                link.open.wait()  # a cut: hold what was read
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            dst.sendall(data)
            link.carried += len(data)
            if trigger:  # the armed chunk went through: now the link is cut
                link.open.clear()
                link.cuts_fired += 1
    except OSError:
        pass
    finally:
        done.set()


def _serve(link: Link, client: socket.socket) -> None:
    link.open.wait()  # during a cut the connection is accepted but nothing answers
    try:
        upstream = socket.create_connection(link.upstream, timeout=5)
        upstream.settimeout(None)
    except OSError:
        _close(client)
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with link.lock:
        link.conns.update((client, upstream))
    done = threading.Event()  # either direction ended: end the connection (no half-open links)
    threading.Thread(target=_pipe, args=(link, client, upstream, done), kwargs={"upstream": True}, daemon=True).start()
    threading.Thread(target=_pipe, args=(link, upstream, client, done), kwargs={"upstream": False}, daemon=True).start()
    done.wait()
    with link.lock:
        link.conns.difference_update((client, upstream))
    _close(client)
    _close(upstream)


def _accept_loop(link: Link, listener: socket.socket) -> None:
    while True:
        client, _ = listener.accept()
        link.accepted += 1
        if link.drop and random.random() < link.drop:
            link.dropped += 1
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            _close(client)  # linger 0: an RST
            continue
        threading.Thread(target=_serve, args=(link, client), daemon=True).start()


class Server:
    def __init__(self) -> None:
        self.links: dict[str, Link] = {}

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "add":
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((cmd["host"], cmd.get("port", 0)))
            listener.listen(512)
            link = Link(cmd["name"], listener.getsockname()[:2], (cmd["upstream_host"], cmd["upstream_port"]))
            link.open.set()
            self.links[link.name] = link
            threading.Thread(target=_accept_loop, args=(link, listener), daemon=True).start()
            return {"port": link.listen[1]}
        link = self.links[cmd["name"]]
        if op == "set":
            for key in ("rtt_ms", "jitter_ms", "drop"):
                if key in cmd:
                    setattr(link, key, float(cmd[key]))
        elif op == "cut":
            link.open.clear()
        elif op == "cut_after":
            link.cut_after = cmd["marker"].encode()
        elif op == "cut_before":
            link.cut_before = cmd["marker"].encode()
        elif op == "heal":
            link.open.set()
        elif op == "reset":
            with link.lock:
                conns = list(link.conns)
            for sock in conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        elif op != "stats":
            raise ValueError(f"unknown op {op}")
        return {"accepted": link.accepted, "dropped": link.dropped, "bytes": link.carried, "open": len(link.conns),
                "cut": not link.open.is_set(), "cuts_fired": link.cuts_fired, "flights": link.flights}  # fmt: skip


def main() -> None:
    server = Server()
    for line in sys.stdin:
        try:
            reply: dict[str, Any] = {"ok": True, **server.command(json.loads(line))}
        except Exception as exc:  # the driver reads the error from the reply
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class NetProxy:
    """The proxy as a child process of the caller, driven through its stdin; ``close`` ends it (and every link)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lock = threading.Lock()
        self.ports: dict[str, int] = {}

    def _call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        if not reply.pop("ok"):
            raise RuntimeError(f"netproxy {cmd}: {reply['error']}")
        return reply

    def add(self, name: str, host: str, upstream: tuple[str, int], *, port: int = 0) -> int:
        """A link listening on ``host`` (a free port unless given) that forwards to ``upstream``; its port."""
        self.ports[name] = self._call(
            op="add", name=name, host=host, port=port, upstream_host=upstream[0], upstream_port=upstream[1]
        )["port"]
        return self.ports[name]

    def set(self, name: str, *, rtt_ms: float | None = None, jitter_ms: float | None = None, drop: float | None = None):
        values = {k: v for k, v in (("rtt_ms", rtt_ms), ("jitter_ms", jitter_ms), ("drop", drop)) if v is not None}
        return self._call(op="set", name=name, **values)

    def cut(self, name: str) -> dict[str, Any]:
        return self._call(op="cut", name=name)

    def cut_after(self, name: str, marker: bytes) -> dict[str, Any]:
        """Cut the link right after the first client chunk containing ``marker`` has been delivered upstream."""
        return self._call(op="cut_after", name=name, marker=marker.decode())

    def cut_before(self, name: str, marker: bytes) -> dict[str, Any]:
        """Cut the link at the first client chunk containing ``marker``, holding that chunk too."""
        return self._call(op="cut_before", name=name, marker=marker.decode())

    def heal(self, name: str) -> dict[str, Any]:
        return self._call(op="heal", name=name)

    def reset(self, name: str) -> dict[str, Any]:
        return self._call(op="reset", name=name)

    def stats(self, name: str) -> dict[str, Any]:
        return self._call(op="stats", name=name)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()

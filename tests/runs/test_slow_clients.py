"""Slow clients against a real gunicorn run as the Procfile runs it (docs/operations.md#slow-clients).

A sync worker serves one connection at a time, so a client that sends its request head or its body slowly
holds a whole worker while it does. With the Procfile's two workers, two such clients used to stop every
other request until gunicorn's worker timeout killed the workers (30 s per wave). These tests hold the
attack open while a well-behaved client triggers runs, and send a large body at a normal rate.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from mollifier_project.slow_clients import MAX_HEAD_BYTES, BodyAllowance, Head, SlowClientLimits, head_state
from runs.tenants import ensure_tenant, issue_api_key
from tests.live import Gunicorn

TRIGGER = "/api/v1/tasks/hello/trigger"
WORKERS = 2  # the Procfile's --workers
BODY_TIMEOUT_S = 2.0  # MOLLIFIER_WEB_IDLE_TIMEOUT_S for the attack test: a trickled body is cut after about this
ATTACK_S = 33.0  # how long the attack lasts while triggers are sent: longer than gunicorn's 30 s worker timeout
CLIENT_TIMEOUT_S = 10.0  # the well-behaved client's read timeout: a trigger slower than this counts as lost
# A trigger may wait for a worker that a trickled body holds until it is cut (BODY_TIMEOUT_S), plus the time
# to serve what queued behind it; 5 s of margin because the 2-core machine is shared with other test runs.
LATENCY_BOUND_S = BODY_TIMEOUT_S + 5.0
TIMEOUT_408 = "HTTP/1.1 408 Request Timeout"


@dataclass
class Attacker:
    """One slow client, in a thread: it connects, sends ``head``, then ``drip`` every ``every`` seconds and never
    finishes. When the server answers or closes, it records how and reconnects, as a real attacker would."""

    url_port: int
    head: bytes
    drip: bytes
    every: float = 0.5
    outcomes: list[tuple[str, float]] = field(default_factory=list)  # (status line or "closed", seconds held)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", self.url_port)) as sock:
                sock.sendall(self.head)
                outcome = self._hold(sock)
            if outcome is None:
                return
            self.outcomes.append((outcome, time.monotonic() - started))

    def _hold(self, sock: socket.socket) -> str | None:
        while not self.stop.wait(self.every):
            try:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    answer = sock.recv(65536)
                    return answer.split(b"\r\n", 1)[0].decode() if answer else "closed"
                sock.sendall(self.drip)
            except OSError:
                return "closed"
        return None  # still held when the attack ended


def slow_header(port: int) -> Attacker:
    """No API key needed: the request head never ends."""
    return Attacker(port, f"POST {TRIGGER} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode(), b"x")


def trickled_batch_body(port: int, secret: str, batch_id: str) -> Attacker:
    """An authenticated NDJSON batch body, chunked, one byte every half second: the view reads it to its end."""
    head = (
        f"POST /api/v3/batches/{batch_id}/items HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
        "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    return Attacker(port, head, b"1\r\n \r\n")


def post_json(server: Gunicorn, secret: str, path: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(
        f"{server.url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_slow_headers_and_trickled_bodies_do_not_stop_triggers(key_prefix):
    tenant = ensure_tenant("slow-clients", "dev", enrol=False)
    secret = issue_api_key(tenant.env)[1]
    server = Gunicorn(
        {"MOLLIFIER_KEY_PREFIX": key_prefix, "MOLLIFIER_WEB_IDLE_TIMEOUT_S": str(BODY_TIMEOUT_S)},
        workers=WORKERS, timeout=None,
    )  # fmt: skip
    attackers: list[Attacker] = []
    threads: list[threading.Thread] = []
    try:
        workers_before = server.worker_pids()
        batch_id = post_json(server, secret, "/api/v3/batches", {"runCount": 1000}, timeout=10)["id"]
        attackers = [slow_header(server.port) for _ in range(WORKERS)]
        attackers += [trickled_batch_body(server.port, secret, batch_id) for _ in range(WORKERS)]
        threads = [threading.Thread(target=a.run, daemon=True) for a in attackers]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the attack takes hold of the workers

        latencies: list[float] = []
        lost: list[str] = []
        deadline = time.monotonic() + ATTACK_S
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                post_json(server, secret, TRIGGER, {"payload": "{}"}, timeout=CLIENT_TIMEOUT_S)
                latencies.append(time.monotonic() - started)
            except (OSError, urllib.error.URLError) as exc:
                lost.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f} s")
        workers_after = server.worker_pids()
    finally:
        for attacker in attackers:
            attacker.stop.set()
        for thread in threads:
            thread.join(5)
        server.stop()

    held = [seconds for a in attackers for _, seconds in a.outcomes]
    answers = sorted({outcome for a in attackers for outcome, _ in a.outcomes})
    print(
        f"\ntriggers answered {len(latencies)}, lost {len(lost)} {lost}; latency max "
        f"{max(latencies, default=0):.2f} s, median {sorted(latencies)[len(latencies) // 2] if latencies else 0:.3f} s; "
        f"slow clients ended {len(held)}, held at most {max(held, default=0):.1f} s, answers {answers}; "
        f"workers {sorted(workers_before)} -> {sorted(workers_after)}"
    )
    assert not lost, f"triggers lost during the attack: {lost}"
    assert len(latencies) >= 5
    assert max(latencies) < LATENCY_BOUND_S
    assert workers_after == workers_before, "a worker was killed and respawned for a slow client"
    # Every slow client was answered 408 (or, if a byte it sent crossed the close, saw the connection reset).
    for kind, group in (("slow heads", attackers[:WORKERS]), ("trickled bodies", attackers[WORKERS:])):
        outcomes = [outcome for a in group for outcome, _ in a.outcomes]
        assert TIMEOUT_408 in outcomes, f"the {kind} were never answered 408: {outcomes}"
        assert set(outcomes) <= {TIMEOUT_408, "closed"}, outcomes


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_large_body_sent_at_a_normal_rate_is_not_cut(key_prefix):
    """1,000 NDJSON items (the largest batch, 1.1 MB) sent chunked over about 4 s, four times the body timeout: the minimum-rate
    rule extends the allowance as bytes arrive, so the whole batch is accepted."""
    tenant = ensure_tenant("large-body", "dev", enrol=False)
    secret = issue_api_key(tenant.env)[1]
    server = Gunicorn({"MOLLIFIER_KEY_PREFIX": key_prefix, "MOLLIFIER_WEB_IDLE_TIMEOUT_S": "1"}, timeout=None)
    items = 1000
    lines = [
        json.dumps({"index": i, "task": "hello", "payload": json.dumps({"pad": "x" * 1000, "i": i})}).encode() + b"\n"
        for i in range(items)
    ]
    body = b"".join(lines)
    chunks = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]

    def paced() -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            time.sleep(4.0 / len(chunks))

    try:
        batch_id = post_json(server, secret, "/api/v3/batches", {"runCount": items}, timeout=10)["id"]
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        started = time.monotonic()
        connection.request(
            "POST", f"/api/v3/batches/{batch_id}/items", body=paced(), encode_chunked=True,
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/x-ndjson",
                     "Transfer-Encoding": "chunked"},
        )  # fmt: skip
        response = connection.getresponse()
        answer = json.loads(response.read())
        elapsed = time.monotonic() - started
        connection.close()
    finally:
        server.stop()
    print(f"\n{len(body)} bytes in {elapsed:.1f} s: {response.status} {answer}")
    assert elapsed > 2.0  # really slower than the 1 s body timeout
    assert response.status == 200, answer
    assert answer["itemsAccepted"] == items


def test_a_body_earns_time_as_it_arrives_up_to_the_cap():
    """The body rule (docs/operations.md#slow-clients): WEB_IDLE_TIMEOUT_S at first, one more second per
    WEB_BODY_MIN_RATE bytes, never past WEB_BODY_MAX_S; and no single read waits longer than the idle timeout."""
    limits = SlowClientLimits(head_timeout_s=10, idle_timeout_s=10, body_min_rate=1024, body_max_s=20)
    body = BodyAllowance(limits, started=100.0)
    assert body.wait_s(100.0) == 10  # one read waits at most the idle timeout
    assert body.wait_s(109.0) == 1
    assert body.wait_s(110.0) <= 0  # nothing arrived in 10 s: late
    body.received = 5 * 1024  # 5 KiB bought 5 more seconds
    assert body.wait_s(110.0) == 5
    assert body.wait_s(115.0) <= 0
    body.received = 1024 * 1024  # a fast body earns plenty, but the cap holds
    assert body.wait_s(112.0) == 8
    assert body.wait_s(120.0) <= 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_refuses_to_boot_when_a_body_may_outlast_the_worker_timeout():
    """A body allowed 30 s under the 30 s worker timeout would get the worker killed instead of a 408."""
    with pytest.raises(RuntimeError, match="gunicorn exited"):
        Gunicorn({"MOLLIFIER_WEB_BODY_MAX_S": "30"}, timeout=None)
    Gunicorn({"MOLLIFIER_WEB_BODY_MAX_S": "29"}, timeout=None).stop()  # just under it boots


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_body_that_stops_halfway_is_answered_408_naming_the_body(key_prefix):
    """A trigger that announces 100 bytes and sends 10: Django's ``request.body`` read times out, and the answer
    is a JSON 408 that says what was too slow, within the idle timeout (1 s here; 5 s of margin for the box)."""
    tenant = ensure_tenant("stopped-body", "dev", enrol=False)
    secret = issue_api_key(tenant.env)[1]
    server = Gunicorn({"MOLLIFIER_KEY_PREFIX": key_prefix, "MOLLIFIER_WEB_IDLE_TIMEOUT_S": "1"}, timeout=None)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(
                f"POST {TRIGGER} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
                'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"payload"'.encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body)["error"].startswith("Request body too slow: ")
    assert elapsed < 1 + 5


def test_a_head_is_complete_at_its_blank_line_and_too_large_past_64_kib():
    assert head_state(b"GET / HTTP/1.1\r\nHost: x\r\n") is Head.INCOMPLETE
    assert head_state(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n{") is Head.COMPLETE
    assert head_state(b"GET / HTTP/1.1\r\nX: " + b"y" * MAX_HEAD_BYTES) is Head.TOO_LARGE
    assert head_state(b"GET / HTTP/1.1\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n") is Head.TOO_LARGE


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_head_over_64_kib_is_answered_431_at_once(key_prefix):
    """Handed to gunicorn's parser, the rest of an endless head would be read on a worker's time (it held one
    for the whole idle timeout before this rule); the worker answers 431 as soon as the head passes 64 KiB."""
    server = Gunicorn({"MOLLIFIER_KEY_PREFIX": key_prefix}, timeout=None)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"y" * 70_000)
            answer = sock.recv(65536)
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
    assert elapsed < 5  # the default idle timeout is 10 s: well before it, with margin for the loaded box


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_busy_without_pause_for_longer_than_its_timeout_is_not_killed(key_prefix):
    """16 clients keep the listen queue from ever running dry for 12 s, more than twice a 5 s worker timeout.
    The worker's heartbeat goes with every request served (as in gunicorn's sync worker), so the arbiter
    never takes a busy worker for a stuck one: every request is answered and the workers stay the same."""
    server = Gunicorn(
        {"MOLLIFIER_KEY_PREFIX": key_prefix, "MOLLIFIER_WEB_IDLE_TIMEOUT_S": "2", "MOLLIFIER_WEB_BODY_MAX_S": "4"},
        timeout=5,
    )  # fmt: skip
    statuses: list[int | str] = []
    deadline = time.monotonic() + 12

    def client() -> None:
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{server.url}/api/v1/runs", timeout=10).close()
                statuses.append(200)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError as exc:
                statuses.append(type(exc).__name__)

    try:
        workers_before = server.worker_pids()
        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        workers_after = server.worker_pids()
    finally:
        server.stop()
    assert len(statuses) > 100
    assert set(statuses) == {401}, sorted(set(map(str, statuses)))  # no key: answered through the whole stack
    assert workers_after == workers_before

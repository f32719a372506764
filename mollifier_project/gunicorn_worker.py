"""gunicorn's sync worker, made safe against slow clients (docs/operations.md#slow-clients).

``mollifier_project/gunicorn.conf.py`` selects it (``worker_class``). The rules and their settings are in
``mollifier_project.slow_clients``; this module applies them to sockets:

1. The worker's loop waits on its listeners and on the connections whose request head is incomplete, with one
   ``select``. A new connection is read at once (a normal client's head is usually there already); an
   incomplete head is kept, non-blocking, until the rest arrives. Only a connection with a whole head is served,
   by gunicorn's own ``SyncWorker.handle``: the request is parsed and answered exactly as before.
2. Heads still incomplete after ``WEB_HEAD_TIMEOUT_S`` get a 408 and are closed, heads over 64 KiB a 431.
   At most ``worker_connections`` heads (gunicorn's setting, 1000 by default) are held per worker; a new
   connection beyond that closes the oldest one, so a flood of slow heads cannot stop new clients being accepted.
3. The served connection is wrapped in a ``_DeadlineSocket``: reads of the body wait under the body allowance
   and raise ``RequestReadTimeout`` when it runs out (the API middleware answers 408); writes wait at most
   ``WEB_IDLE_TIMEOUT_S`` per send. A cut connection is closed without lingering for the rest of its body.

TLS is not inspected: with gunicorn's own ``certfile``, gunicorn's own sync loop serves connections, without
these rules. Terminate TLS in front of gunicorn (docs/operations.md#slow-clients).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from mollifier_project.config import load_settings
from mollifier_project.slow_clients import (
    MAX_HEAD_BYTES,
    BodyAllowance,
    Head,
    RequestReadTimeout,
    SlowClientLimits,
    head_state,
    raw_response,
)

WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: the arbiter stops instead of respawning
# gunicorn's graceful close reads what the client still sends (up to 2 s) so the answer is not cut by a reset.
# A client whose body was never read (a 401, a 413) could keep a worker that long per connection; half a
# second is plenty for a client that is reading its answer.
CLOSE_LINGER_S = 0.5


@dataclass(eq=False)
class _Pending:
    """A connection whose request head is not complete yet."""

    sock: socket.socket
    addr: Any
    listener: socket.socket
    deadline: float
    head: bytearray = field(default_factory=bytearray)


def late(message: str) -> bytes:
    return raw_response(408, "Request Timeout", message)


class _DeadlineSocket:
    """The served connection as gunicorn's parser and response see it (rule 3). Bytes of the head (and any
    body) already read by the loop are returned first; every later read is a body read under ``allowance``.
    Anything else goes to the real socket."""

    def __init__(self, sock: socket.socket, prefix: bytes, allowance: BodyAllowance):
        self._sock = sock
        self._prefix = prefix
        self._allowance = allowance
        self._late = False
        self._linger_until: float | None = None  # set once the request is answered

    def recv(self, size: int) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        if self._late:
            return b""  # cut: gunicorn's close must not linger reading the rest of a slow body
        if self._linger_until is not None:  # answered: gunicorn's graceful close, for at most CLOSE_LINGER_S
            left = self._linger_until - time.monotonic()
            if left <= 0:
                return b""
            self._sock.settimeout(min(left, self._sock.gettimeout() or left))
            return self._sock.recv(size)
        # Past the deadline the read does not wait (timeout 0), but bytes already here still count: a view that
        # was slow to start reading must not cut a client that sent its body in time.
        self._sock.settimeout(max(0.0, self._allowance.wait_s(time.monotonic())))
        try:
            data = self._sock.recv(size)
        except (TimeoutError, BlockingIOError):
            pass
        else:
            self._allowance.received += len(data)
            return data
        self._late = True
        raise RequestReadTimeout(errno.ETIMEDOUT, self._allowance.late_message(time.monotonic()))

    def send(self, data: bytes) -> int:
        self._sock.settimeout(self._allowance.limits.idle_timeout_s)
        return self._sock.send(data)

    def sendall(self, data: bytes) -> None:
        """Like ``socket.sendall``, but the idle timeout applies to each send, not to the whole response: a large
        answer to a client reading at a normal rate is never cut, a client that stops reading is."""
        view = memoryview(data)
        while view:
            view = view[self.send(view) :]

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        self._sock.settimeout(self._allowance.limits.idle_timeout_s)  # socket.sendfile waits this per chunk
        return self._sock.sendfile(file, offset, count)

    def settimeout(self, value: float | None) -> None:
        self.release()  # only gunicorn's graceful close sets a timeout: the request is over
        self._sock.settimeout(value)

    def release(self) -> None:
        if self._linger_until is None:
            self._linger_until = time.monotonic() + CLOSE_LINGER_S

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class DeadlineWorker(SyncWorker):
    def init_process(self) -> None:
        self.limits = SlowClientLimits.from_settings(load_settings())
        if self.cfg.timeout and self.limits.body_max_s >= self.cfg.timeout:
            self.log.error(
                "MOLLIFIER_WEB_BODY_MAX_S (%s) must be shorter than gunicorn's --timeout (%s): a slow body must be "
                "cut with a 408 before the arbiter kills the worker.", self.limits.body_max_s, self.cfg.timeout,
            )  # fmt: skip
            sys.exit(WORKER_BOOT_ERROR)
        self.pending: dict[socket.socket, _Pending] = {}
        super().init_process()

    def run(self) -> None:
        if self.cfg.is_ssl:  # TLS cannot be inspected here: gunicorn's own loop, without rule 1
            super().run()
            return
        for listener in self.sockets:
            listener.setblocking(False)
        with selectors.DefaultSelector() as selector:
            self.selector = selector
            for listener in self.sockets:
                selector.register(listener, selectors.EVENT_READ, listener)
            selector.register(self.PIPE[0], selectors.EVENT_READ, None)
            try:
                self._loop()
            finally:
                for pending in list(self.pending.values()):
                    self._forget(pending)

    def _loop(self) -> None:
        while self.alive:
            self.notify()
            try:
                events = self.selector.select(self._wait_s(time.monotonic()))
            except OSError as exc:
                if exc.errno == errno.EBADF:  # the listeners were closed under us: shutting down
                    return
                raise
            for key, _ in events:
                if key.data is None:
                    os.read(self.PIPE[0], 1)
                elif isinstance(key.data, _Pending):
                    self._read_head(key.data)
                else:
                    self._accept(key.data)
                if not self.alive:
                    return
            self._expire(time.monotonic())
            if not self.is_parent_alive():
                return

    def _wait_s(self, now: float) -> float:
        wait = self.timeout or 0.5  # gunicorn's heartbeat interval
        if self.pending:
            wait = min(wait, max(0.0, min(p.deadline for p in self.pending.values()) - now))
        return wait

    def _accept(self, listener: socket.socket) -> None:
        """Accept one connection: serve it if its head is already complete, else keep it. One per event, so
        the loop's next ``select`` also sees the kept heads that completed meanwhile: under a steady stream of
        new connections, a kept head must not wait for the listen queue to run dry."""
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        util.close_on_exec(client)
        client.setblocking(False)
        if len(self.pending) >= self.cfg.worker_connections:
            oldest = next(iter(self.pending.values()))
            self._answer(oldest, late("Too many connections are sending their request head; try again"))
        pending = _Pending(client, addr, listener, deadline=time.monotonic() + self.limits.head_timeout_s)
        self.pending[client] = pending
        self.selector.register(client, selectors.EVENT_READ, pending)
        self._read_head(pending)

    def _read_head(self, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._forget(pending)
            return
        if not data:  # the client went away before finishing its head
            self._forget(pending)
            return
        pending.head += data
        state = head_state(bytes(pending.head))
        if state is Head.COMPLETE:
            self._serve(pending)
        elif state is Head.TOO_LARGE:
            self._answer(pending, raw_response(431, "Request Header Fields Too Large",
                                               f"Request head longer than {MAX_HEAD_BYTES} bytes"))  # fmt: skip

    def _serve(self, pending: _Pending) -> None:
        self.notify()  # the arbiter's heartbeat, once per request as in SyncWorker: a busy worker is alive
        del self.pending[pending.sock]
        self.selector.unregister(pending.sock)
        pending.sock.setblocking(True)
        allowance = BodyAllowance(self.limits, started=time.monotonic())
        client = _DeadlineSocket(pending.sock, bytes(pending.head), allowance)
        self.handle(pending.listener, client, pending.addr)  # parses, answers and closes, as SyncWorker does

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> None:
        try:
            super().handle_request(listener, req, client, addr)
        finally:
            if isinstance(client, _DeadlineSocket):
                client.release()

    def _expire(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if p.deadline <= now]:
            self._read_head(pending)  # what arrived while this worker was serving others counts
            if pending.sock in self.pending:
                self.log.info("slow request head cut after %g s: %s bytes from %s", self.limits.head_timeout_s,
                              len(pending.head), pending.addr)  # fmt: skip
                self._answer(pending, late(f"Request head not complete within {self.limits.head_timeout_s:g} s"))

    def _answer(self, pending: _Pending, response: bytes) -> None:
        try:
            pending.sock.send(response)  # non-blocking: a few hundred bytes always fit
            pending.sock.shutdown(socket.SHUT_WR)
            for _ in range(16):  # read what is already here, so closing sends no reset over the 408
                if not pending.sock.recv(65536):
                    break
        except OSError:
            pass
        self._forget(pending)

    def _forget(self, pending: _Pending) -> None:
        self.pending.pop(pending.sock, None)
        try:
            self.selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass
        pending.sock.close()

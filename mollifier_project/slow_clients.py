"""How long the web tier waits for a slow client (docs/operations.md#slow-clients): the pure rules.

A sync gunicorn worker serves one connection at a time, so every second it waits on a client is a second no
one else is served. ``mollifier_project.gunicorn_worker.DeadlineWorker`` applies these rules:

1. **Request head.** The worker collects heads of several connections at once without blocking on any of
   them, and serves a connection only once its head is complete. A head still incomplete
   ``WEB_HEAD_TIMEOUT_S`` after the connection was accepted is answered 408 and closed; a head longer than
   ``MAX_HEAD_BYTES`` is answered 431. A slow head therefore costs a file descriptor and at most 64 KiB,
   never a worker.
2. **Request body.** Once a request is being served, its body must keep arriving: each read waits at most
   ``WEB_IDLE_TIMEOUT_S``, and the whole body must have arrived by ``WEB_IDLE_TIMEOUT_S + received /
   WEB_BODY_MIN_RATE`` seconds after the head (every ``WEB_BODY_MIN_RATE`` bytes buy one more second, the
   rule of Apache's mod_reqtimeout), and never later than ``WEB_BODY_MAX_S``, which stays below gunicorn's
   worker timeout so a slow body is cut with a 408 rather than the worker being killed.
3. **Response.** Each write waits at most ``WEB_IDLE_TIMEOUT_S`` for the client to take more bytes.

Time is passed in (``now``: ``time.monotonic()`` seconds), so the rules are tested without a clock.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from mollifier_project.config import MollifierSettings

# The longest request head the worker accepts (nginx's default header buffers hold 32 KiB). A longer one is
# answered 431 without being served: handed to gunicorn's parser, its rest would be read on a worker's time.
MAX_HEAD_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"


class RequestReadTimeout(TimeoutError):
    """The client stopped sending its body, or sends it too slowly. The view's read raises it; the API
    middleware answers 408. A ``TimeoutError`` (an ``OSError``), so gunicorn's socket code treats it as the
    socket error it is."""


@dataclass(frozen=True)
class SlowClientLimits:
    head_timeout_s: float
    idle_timeout_s: float
    body_min_rate: int
    body_max_s: float

    @classmethod
    def from_settings(cls, cfg: MollifierSettings) -> SlowClientLimits:
        return cls(
            head_timeout_s=cfg.WEB_HEAD_TIMEOUT_S,
            idle_timeout_s=cfg.WEB_IDLE_TIMEOUT_S,
            body_min_rate=cfg.WEB_BODY_MIN_RATE,
            body_max_s=cfg.WEB_BODY_MAX_S,
        )


@dataclass
class BodyAllowance:
    """The time a request's body may still take (rule 2). ``started`` is when the head was complete."""

    limits: SlowClientLimits
    started: float
    received: int = 0

    def deadline(self) -> float:
        earned = self.limits.idle_timeout_s + self.received / self.limits.body_min_rate
        return self.started + min(earned, self.limits.body_max_s)

    def wait_s(self, now: float) -> float:
        """How long the next read may wait; 0 or less means the body is late and the read must not start."""
        return min(self.limits.idle_timeout_s, self.deadline() - now)

    def late_message(self, now: float) -> str:
        return (
            f"Request body too slow: {self.received} bytes in {now - self.started:.1f} s (each read may wait "
            f"{self.limits.idle_timeout_s:g} s, the body must arrive at {self.limits.body_min_rate} bytes/s after "
            f"the first {self.limits.idle_timeout_s:g} s, and within {self.limits.body_max_s:g} s)"
        )


class Head(enum.Enum):
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    TOO_LARGE = "too large"


def head_state(buffered: bytes) -> Head:
    """Whether the bytes received so far hold a whole request head (within ``MAX_HEAD_BYTES``)."""
    end = buffered.find(HEAD_END)
    if end == -1:
        return Head.TOO_LARGE if len(buffered) >= MAX_HEAD_BYTES else Head.INCOMPLETE
    return Head.COMPLETE if end + len(HEAD_END) <= MAX_HEAD_BYTES else Head.TOO_LARGE


def raw_response(status: int, reason: str, message: str) -> bytes:
    """An answer the worker writes itself, before any request object exists (a 408 or 431 for a head)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body

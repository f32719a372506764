"""What a database failure means for the caller: one classification for the drain and the trigger path
(the outcome table in docs/architecture.md#drain-outcomes).

- ``OUTAGE``: Postgres cannot take writes for a while — unreachable (connection refused/reset, server
  shutting down, pool timeout, too many connections), read-only (a failover onto a demoted primary or a
  standby, 25006), out of resources (class 53: disk full, out of memory) or failing I/O (class 58). The
  drain releases the whole round with attempts unchanged and backs off; the trigger path diverts into
  the buffer (enrolled orgs) or answers 503. Nothing about the entries is wrong, so an outage must never
  burn attempts, write SYSTEM_FAILURE rows or dead-letter anything.
  A session Postgres ended because its client stopped inside a transaction (25P03, the drain's
  ``idle_in_transaction_session_timeout``: a frozen worker woken) counts here too: like a lost
  connection, nothing of the transaction committed and the connection must be replaced.
- ``RETRY``: a transient conflict (deadlock, serialization failure, lock or statement timeout). The
  entries are requeued with backoff and attempts + 1.
- ``FATAL``: anything else (bad data, integrity error, a bug). Retrying cannot help; the entry becomes
  a SYSTEM_FAILURE row.
"""

from __future__ import annotations

from enum import StrEnum

import psycopg
from django.db import utils as db_utils
from psycopg_pool import PoolTimeout


class Failure(StrEnum):
    OUTAGE = "outage"
    RETRY = "retry"
    FATAL = "fatal"


# SQLSTATE classes/codes: 08 connection exception; 57P01-03 admin/crash shutdown, cannot connect now;
# 25006 read-only transaction; 53 insufficient resources (53100 disk full, 53200 out of memory, 53300 too
# many connections, 53400 configuration limit); 58 system / I/O error (58000, 58030).
# 25P03 idle-in-transaction session timeout (the session is gone, as for class 08).
_OUTAGE_CODES = ("08", "57P01", "57P02", "57P03", "25006", "25P03", "53", "58")
# 40001 serialization_failure, 40P01 deadlock_detected, 55P03 lock_not_available, 57014 query_canceled.
_RETRY_CODES = ("40001", "40P01", "55P03", "57014")


def classify(exc: BaseException) -> Failure:
    """Classify an exception raised while materialising (Django wraps psycopg errors; look inside)."""
    cause = exc.__cause__ if isinstance(exc, db_utils.Error) and exc.__cause__ is not None else exc
    if isinstance(cause, PoolTimeout):
        return Failure.OUTAGE
    code = getattr(cause, "sqlstate", None)
    if code:
        if code.startswith(_OUTAGE_CODES):
            return Failure.OUTAGE
        if code in _RETRY_CODES:
            return Failure.RETRY
        return Failure.FATAL
    # No SQLSTATE: the connection itself failed (refused, reset, closed under us).
    if isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):
        return Failure.OUTAGE
    if isinstance(exc, db_utils.OperationalError | db_utils.InterfaceError):
        return Failure.OUTAGE
    return Failure.FATAL


_TIMEOUT_CODES = ("55P03", "57014")


def timed_out(exc: BaseException) -> bool:
    """A ``RETRY`` that was a lock or statement timeout (55P03, 57014): the write waited on something —
    often a row another session holds — that may not be over when the entry is tried again."""
    cause = exc.__cause__ if isinstance(exc, db_utils.Error) and exc.__cause__ is not None else exc
    return getattr(cause, "sqlstate", None) in _TIMEOUT_CODES


def lock_timed_out(exc: BaseException) -> bool:
    """A lock timeout (55P03): the write waited on a lock another session holds."""
    cause = exc.__cause__ if isinstance(exc, db_utils.Error) and exc.__cause__ is not None else exc
    return getattr(cause, "sqlstate", None) == "55P03"

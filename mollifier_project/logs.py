"""One JSON object per log line, carrying the ``extra={...}`` fields (env_id, org_id, run_id, shard…).

Metrics must not carry tenant ids (docs/architecture.md#telemetry), so the logs do: a line is searchable by any of its fields.
A small formatter rather than a dependency: all it needs is ``json.dumps`` of the record's own fields plus
the standard ones, and owning it keeps the field names stable (``time``, ``level``, ``logger``,
``message``, then the extras, then ``exc_info``).

No line prints a presigned packet token (``mask_secrets``): the token in ``/api/v1/packet-objects/<token>``
is a bearer credential, and paths reach the logs in Django's ``django.request`` warnings, in request reprs
carried as extras, in tracebacks, and in gunicorn's access log (``mollifier_project.gunicorn_logging``).
Both formatters here mask the whole line they produce; gunicorn's loggers carry ``MaskSecrets`` as a filter.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

PACKET_OBJECT_ROUTE = "/api/v1/packet-objects/"  # runs.packets builds presigned URLs under it
# A token runs up to the next character no token has (its alphabet is URL-safe base64 and ':'), so the mask
# holds inside a request line, a quoted repr, a JSON string or a query string alike.
_PACKET_TOKEN = re.compile(re.escape(PACKET_OBJECT_ROUTE) + r"[^\s/?#\"'<>\\]+")
MASKED_PACKET_PATH = PACKET_OBJECT_ROUTE + "<token>"


def mask_secrets(text: str) -> str:
    """``text`` with every presigned packet token replaced by ``<token>``."""
    return _PACKET_TOKEN.sub(MASKED_PACKET_PATH, text) if PACKET_OBJECT_ROUTE in text else text


class MaskSecrets(logging.Filter):
    """A filter for loggers whose formatters are not ours (gunicorn's): the record's message, masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update((key, value) for key, value in vars(record).items() if key not in _STANDARD and key not in doc)
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return mask_secrets(json.dumps(doc, default=str, ensure_ascii=False))


class PlainFormatter(logging.Formatter):
    """``LOG_FORMAT=plain``: the standard formatter, masked as the JSON one is."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))

"""One JSON object per log line, carrying the ``extra={...}`` fields (env_id, org_id, run_id, shard…).

Metrics must not carry tenant ids (docs/architecture.md#telemetry), so the logs do: a line is searchable by any of its fields.
A small formatter rather than a dependency: all it needs is ``json.dumps`` of the record's own fields plus
the standard ones, and owning it keeps the field names stable (``time``, ``level``, ``logger``,
``message``, then the extras, then ``exc_info``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

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
        return json.dumps(doc, default=str, ensure_ascii=False)

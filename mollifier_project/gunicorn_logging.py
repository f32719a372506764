"""gunicorn's logger with presigned packet tokens masked (docs/operations.md#logs).

gunicorn's access log prints each request line, and a presigned packet URL carries its bearer token in the
path (``/api/v1/packet-objects/<token>``): whoever reads the log could read or write that packet. This
logger class (``logger_class`` in ``gunicorn.conf.py``) puts ``mollifier_project.logs.MaskSecrets`` on its
access and error loggers, so every line either writes has the token replaced by ``<token>``; the rest of
the request line (method, other paths, status, size) is kept.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from mollifier_project.logs import MaskSecrets


class MaskingLogger(Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.access_log, self.error_log):
            if not any(isinstance(f, MaskSecrets) for f in log.filters):
                log.addFilter(MaskSecrets())

"""The JSON log line (``LOG_FORMAT=json``), one format for every line the service writes.

The app's lines (``web.access.SafeJsonFormatter`` adds the access fields and
redaction), gunicorn's own (``server.gunicorn_log``) and the launcher's all come
out as one object per line with ``time`` (ISO 8601, UTC), ``level``, ``logger``
and ``message``, so a log pipeline never meets a line it cannot parse.
Light on purpose: gunicorn's master imports it, and must not import ``requests``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from pythonjsonlogger.json import JsonFormatter


class JsonLines(JsonFormatter):
    """python-json-logger's formatter with the service's field names and an ISO 8601 UTC time."""

    def __init__(self) -> None:
        super().__init__("{asctime}{levelname}{name}{message}", style="{",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")

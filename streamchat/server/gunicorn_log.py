"""gunicorn's own log lines as JSON objects, for ``LOG_FORMAT=json`` (``gunicorn.conf.py`` names it).

Not ``logconfig_dict``: any logging config turns gunicorn's access log on, which
formats a line for every request that the app already logs itself.
"""

from __future__ import annotations

from gunicorn.glogging import Logger

from ..logformat import JsonLines


class JsonLogger(Logger):
    """gunicorn's logger, its error log (start, stop, worker lines, tracebacks) written by ``JsonLines``."""

    def setup(self, cfg) -> None:
        super().setup(cfg)  # also on a reload (SIGHUP), which rebuilds the handlers
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonLines())

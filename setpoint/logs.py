"""Logs are events with fields: a formatter that prints a record's `extra` fields as key=value pairs."""

from __future__ import annotations

import logging

from setpoint import settings as config

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        return line + "".join(
            f" {k}={v!r}" if isinstance(v, str) and " " in v else f" {k}={v}" for k, v in fields.items()
        )


def configure(level: int | str | None = None) -> None:
    """Send events to stderr, one line each, with their fields, from `level` up (default SETPOINT_LOG_LEVEL)."""
    level = level if level is not None else config.get().log_level
    handler = logging.StreamHandler()
    handler.setFormatter(EventFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a wake during a running tick is expected

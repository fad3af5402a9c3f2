"""`setpoint api`: the REST API served by uvicorn, logging events the way the scheduler and workers do."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from setpoint import logs
from setpoint.settings import Settings


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until interrupted; Ctrl-C or SIGTERM shuts down gracefully and closes the database pool."""
    logs.configure()
    # log_config=None: uvicorn's loggers go through the handler logs.configure() installed.
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None)

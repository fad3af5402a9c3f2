"""`setpoint api`: the REST API served by uvicorn, logging events the way the scheduler and workers do."""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from api.app import create_app
from setpoint import logs
from setpoint.errors import UsageError
from setpoint.settings import Settings

log = logging.getLogger("setpoint.api")
MIN_TOKEN_CHARS = 32
"""A shorter token is warned about at start (not refused: deployments have them)."""


def loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: 127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    settings: Settings, host: str, port: int, *, insecure_no_auth: bool = False, console_actions: bool = False
) -> None:
    """Serve until interrupted; Ctrl-C or SIGTERM shuts down gracefully and closes the database pool.

    UsageError, before anything listens, if there is no token and serving without one was not asked for on
    a loopback address.
    """
    if insecure_no_auth and not settings.api_token and not loopback(host):
        raise UsageError(
            f"--insecure-no-auth is allowed only on a loopback --host (127.0.0.1, ::1 or localhost), not {host!r}: "
            "set SETPOINT_API_TOKEN to serve on other addresses"
        )
    if console_actions and settings.api_token:
        raise UsageError(
            "--console-actions is for a console served without a token: with SETPOINT_API_TOKEN set, the console's "
            "actions are open to whoever signs in with it already, so drop --console-actions"
        )
    if console_actions and not insecure_no_auth:
        raise UsageError(
            "--console-actions lets anyone on this machine act from the console without a token, so it needs "
            "--insecure-no-auth too (on a loopback --host); or set SETPOINT_API_TOKEN instead and drop "
            "--console-actions (users then sign in with the token)"
        )
    app = create_app(settings, insecure_no_auth=insecure_no_auth, console_actions=console_actions)
    logs.configure()
    if settings.api_token and len(settings.api_token) < MIN_TOKEN_CHARS:
        log.warning(
            "SETPOINT_API_TOKEN is short: use at least 32 random characters (openssl rand -hex 32)",
            extra={"chars": len(settings.api_token)},
        )
    if not settings.api_token:
        log.warning(
            "serving without authentication: anyone on this machine can change desired state and run commands",
            extra={"host": host, "port": port},
        )
    # log_config=None: uvicorn's loggers go through the handler logs.configure() installed.
    # Event streams never end by themselves: at shutdown they are given a few seconds, then cancelled.
    uvicorn.run(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=3)

"""The built-in composite App kind: a command with replicas and its config files, kept as a Workload and Files
that the App's controller owns (controllers/app.py), so that editing a config file rolls the replicas."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict
from sqlmodel import Field

from models.base import Resource, check, common_constraints, json_limits
from models.workload import ENV_RULES, EnvName, EnvValue

MAX_APP_NAME = 240
"""Shorter than other names: its Files are named `<app>-<12 hex digits of the path's digest>`."""


class App(Resource, table=True):
    __tablename__: ClassVar[str] = "apps"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("apps"),
        check(f"length(name) <= {MAX_APP_NAME}", "name_length", f"a name of at most {MAX_APP_NAME} characters"),
        check("length(btrim(command)) > 0", "command_present", "a command"),
        check("replicas >= 0 AND replicas <= 1000", "replicas_range", "a number from 0 to 1000"),
        check("jsonb_typeof(env) = 'object'", "env_object", "an object of environment variables"),
        check("setpoint_env_valid(env)", "env_valid", ENV_RULES),
        *json_limits("env", "environment variables"),
        check("jsonb_typeof(files) = 'object'", "files_object", "an object of absolute path to content"),
        check(
            "NOT jsonb_path_exists(files, "
            """'$.keyvalue() ? (!(@.key starts with "/") || @.value.type() != "string")')""",
            "files_paths",
            "an object of absolute path to content (a string)",
        ),
        *json_limits("files", "config files"),
        check("health_command IS NULL OR health_url IS NULL", "health_command_or_url", "at most one health check"),
        check("health_url IS NULL OR health_url ~ '^https?://'", "health_url_http", "an http:// or https:// URL"),
    )
    kind: ClassVar[str] = "App"

    command: str = Field(
        max_length=8192,
        schema_extra={"pattern": r"\S"},
        description="What each replica runs, as a Workload's command.",
    )
    replicas: int = Field(
        default=1, ge=0, le=1000, description="How many copies run.", sa_column_kwargs={"server_default": text("1")}
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        sa_type=MutableDict.as_mutable(JSONB),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
    )
    """Environment variables of every replica; the controller adds CONFIG_SHA (the config files' digests)."""
    files: dict[str, str] = Field(
        default_factory=dict,
        sa_type=MutableDict.as_mutable(JSONB),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
    )
    """Config files: absolute path -> content, each kept as a File owned by the app."""
    health_command: str | None = Field(default=None, max_length=8192)
    """Run per replica (with its environment); exit code 0 means healthy."""
    health_url: str | None = Field(
        default=None,
        max_length=2048,
        schema_extra={"pattern": "^https?://"},
        description="GET per replica, `{replica}` replaced by its index; a 2xx answer means healthy.",
    )

"""The built-in Workload kind: `replicas` copies of a command kept running on a worker's host."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import StrictFloat, StrictInt, StrictStr, StringConstraints
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict
from sqlmodel import Field

from models.base import Resource, check, common_constraints, json_limits
from models.node import node_check

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_RULES = "variables named with letters, digits and '_' (not starting with a digit), each a string or a number"
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]
EnvValue = StrictStr | StrictInt | StrictFloat
"""What a process's environment can hold: true/false or null have no one obvious spelling there, so are refused."""


class Workload(Resource, table=True):
    __tablename__: ClassVar[str] = "workloads"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("workloads"),
        check("length(btrim(command)) > 0", "command_present", "a command"),
        check("replicas >= 0 AND replicas <= 1000", "replicas_range", "a number from 0 to 1000"),
        check("jsonb_typeof(env) = 'object'", "env_object", "an object of environment variables"),
        check("setpoint_env_valid(env)", "env_valid", ENV_RULES),
        *json_limits("env", "environment variables"),
        node_check("node"),
        check("stop_grace_seconds >= 0 AND stop_grace_seconds <= 60", "stop_grace_seconds_range", "0 to 60"),
        check("working_dir IS NULL OR working_dir LIKE '/%'", "working_dir_absolute", "an absolute path"),
        check("health_command IS NULL OR health_url IS NULL", "health_command_or_url", "at most one health check"),
        check("health_url IS NULL OR health_url ~ '^https?://'", "health_url_http", "an http:// or https:// URL"),
    )
    kind: ClassVar[str] = "Workload"
    templated: ClassVar[tuple[str, ...]] = ("command", "env")

    command: str = Field(
        max_length=8192,
        schema_extra={"pattern": r"\S"},
        description="What each replica runs, as in a shell: run directly unless it needs a shell's features.",
    )
    replicas: int = Field(
        default=1, ge=0, le=1000, description="How many copies run.", sa_column_kwargs={"server_default": text("1")}
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        sa_type=MutableDict.as_mutable(JSONB),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
    )
    """Extra environment variables; every replica also gets SETPOINT_WORKLOAD and SETPOINT_REPLICA."""
    working_dir: str | None = Field(
        default=None, max_length=4096, schema_extra={"pattern": "^/"}, description="Absolute; default /."
    )
    stop_grace_seconds: float = Field(
        default=10,
        ge=0,
        le=60,
        description="How long a replica has to exit after SIGTERM before it gets SIGKILL.",
        sa_column_kwargs={"server_default": text("10")},
    )
    health_command: str | None = Field(default=None, max_length=8192)
    """Run per replica (with its environment); exit code 0 means healthy."""
    health_url: str | None = Field(
        default=None,
        max_length=2048,
        schema_extra={"pattern": "^https?://"},
        description="GET per replica, `{replica}` replaced by its index; a 2xx answer means healthy.",
    )
    node: str | None = Field(default=None, max_length=253)
    """Only workers started with SETPOINT_NODE set to this reconcile it; NULL means any worker."""

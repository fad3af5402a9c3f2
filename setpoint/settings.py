"""Every knob Setpoint has, read once from SETPOINT_* environment variables and passed down."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any

from pydantic import Field, IPvAnyAddress, PrivateAttr, ValidatorFunctionWrapHandler, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from setpoint import urls


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SETPOINT_", frozen=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/setpoint"
    """Where desired state, status and run history live: a plain postgresql:// URL; the driver is ours to pick."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    """The Redis database Celery uses as its broker (keep it dedicated to Setpoint)."""

    queue: str = Field("setpoint", pattern=r"^[A-Za-z0-9_.-]+$")
    """The Celery queue reconciles go through; node-bound ones use `<queue>.node.<node>`."""

    default_interval_seconds: int = Field(30, ge=1)
    """How often a resource is reconciled when neither its row nor its kind says otherwise."""

    jitter_ratio: float = Field(0.1, ge=0, lt=1)
    """Each next due time is spread by up to this fraction of the interval, so resources do not march in step."""

    tick_seconds: float = Field(0.5, gt=0)
    """How often the scheduler claims due resources (a NOTIFY wakes it sooner)."""

    claim_batch_size: int = Field(500, ge=1)
    """How many due resources one claim takes from the database."""

    housekeeping_seconds: float = Field(60.0, gt=0)
    """How often the scheduler prunes run history."""

    leader_retry_seconds: float = Field(2.0, gt=0)
    """How often a standby scheduler tries to become the active one."""

    retry_attempts: int = Field(3, ge=0)
    """Quick Celery retries after a transient failure, before the scheduler's longer backoff takes over."""

    backoff_base_seconds: float = Field(1.0, gt=0)
    """The first retry delay; each further consecutive failure doubles it."""

    backoff_max_seconds: float = Field(300.0, gt=0)
    """The longest delay between attempts for a resource that keeps failing."""

    quick_retry_max_seconds: float = Field(30.0, gt=0)
    """The longest countdown a Celery retry may carry (kept far below the broker's visibility timeout)."""

    soft_time_limit_seconds: int = Field(120, ge=1)
    """A reconcile running longer is interrupted and recorded as failed."""

    time_limit_seconds: int = Field(150, ge=1)
    """A reconcile running longer is killed with its worker process."""

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()

    @property
    def running_limit_seconds(self) -> float:
        """How long after a worker picked a message up the scheduler may presume it lost (its host gone):
        longer than any reconcile and its quick retries can last."""
        return self.time_limit_seconds + self.quick_retry_max_seconds + 10

    visibility_timeout_seconds: int = Field(900, ge=60)
    """Redis redelivers a message not acknowledged within this time; every delay above stays well below it."""

    node_heartbeat_seconds: float = Field(10.0, gt=0)
    """How often each worker records in the `nodes` table that its node is alive."""

    node_silent_seconds: float = Field(60.0, gt=0)
    """A node with no heartbeat for this long is lost: its resources show Ready=False (NodeLost, phase Unknown),
    and the scheduler stops sending more messages to its queue than the one already waiting there."""

    history_noops_kept: int = Field(20, ge=1)
    """No-op runs kept per resource; changes and failures are kept for history_days."""

    history_days: int = Field(14, ge=1)
    """Runs older than this are pruned, except each resource's last history_noops_kept runs."""

    history_changes_kept: int = Field(100, ge=1)
    """Changes of desired state (table `changes`) kept per resource; a deleted resource's go history_days after it."""

    events_days: int = Field(14, ge=1)
    """Events older than this are pruned by the scheduler's housekeeping."""

    events_kept: int = Field(100_000, ge=100)
    """At most this many events are kept (the newest); older ones are pruned even if younger than events_days."""

    events_max_clients: int = Field(100, ge=1)
    """The most event streams (`GET /v1/events`) one API process serves at once; one more is answered 503."""

    events_client_queue: int = Field(1_000, ge=10)
    """Events waiting to be sent to one stream client; a client that falls this far behind is disconnected (it
    resumes with Last-Event-ID) rather than buffered without bound."""

    events_heartbeat_seconds: float = Field(15.0, gt=0)
    """An idle event stream sends a comment this often, so that proxies keep it open."""

    node: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
    """The node this worker runs on (default: its host name). Workers take their node's queue besides the
    shared one: resources bound to the node, and host-local ones they reconciled first, come there."""

    state_dir: str = "~/.local/state/setpoint"
    """Where a worker keeps what it knows of the processes it started (workload replicas, their logs) and of the
    files it wrote (so that a delete removes only those). `setpoint up` gives its worker `<data_dir>/state` unless
    this is set."""

    file_roots: str = ""
    """Comma-separated folders Files may be managed under (/etc/app,/srv); a path elsewhere is invalid and never
    touched, by write or by delete. Empty (the default) allows any path the worker's user can write."""

    @field_validator("file_roots")
    @classmethod
    def _absolute_roots(cls, value: str) -> str:
        for root in (part.strip() for part in value.split(",")):
            if root and (not root.startswith("/") or any(part in (".", "..") for part in root.split("/"))):
                raise ValueError(f"each folder must be an absolute path without '.' or '..' parts, got {root!r}")
        return value

    crashloop_base_seconds: float = Field(10.0, gt=0)
    """The first delay before restarting a replica that exited soon after start; doubled each time."""

    crashloop_max_seconds: float = Field(300.0, gt=0)
    """The longest delay before restarting a crash-looping replica."""

    replica_log_max_bytes: int = Field(10 * 1024 * 1024, ge=4096)
    """A replica's log (`<state_dir>/workloads/<name>/replica-<slot>.log`) is rotated once it would grow past
    this size: the previous part is kept as `replica-<slot>.log.1`, so a slot's logs take at most twice this."""

    run_as: str | None = None
    """The user replicas and health commands run as: a name, or uid[:gid]. Unset, they run as the worker's own
    user (so as root under a root worker). A worker that is not root can only run them as itself."""

    worker_metrics_port: int | None = Field(9808, ge=0, le=65535)
    """Where a worker serves Prometheus metrics (all its pool processes together); None turns them off."""

    scheduler_metrics_port: int | None = Field(9809, ge=0, le=65535)
    """Where the scheduler serves Prometheus metrics; None turns them off."""

    metrics_address: IPvAnyAddress = Field(default="127.0.0.1", validate_default=True)
    """The address workers and the scheduler serve metrics on. Metrics need no password, so by default only this
    host reads them; `0.0.0.0` (or `::`) lets other hosts or containers scrape them: firewall those ports."""

    metrics_refresh_seconds: float = Field(5.0, gt=0)
    """How often the active scheduler reads the fleet's state from the database and broker for its metrics;
    scrapes are answered from the last reading and never query either."""

    api_token: str | None = None
    """When set, every request to the REST API needs `Authorization: Bearer <token>`."""

    api_max_body_bytes: int = Field(1_048_576, ge=1024)
    """The largest request body the REST API reads (default 1 MiB); a longer one is answered 413 unread."""

    rollout_min_ready_seconds: float = Field(5.0, ge=0)
    """A rollout replaces the next replica only once the last new one has run (and passed its health check)
    this long."""

    controllers: str = ""
    """Comma-separated modules to import at worker start, for controllers that call registry.register()."""

    worker_name: str | None = None
    """How this worker names itself in run history (default: Celery's hostname)."""

    data_dir: str = ".setpoint"
    """Where `setpoint up` keeps the embedded PostgreSQL and Redis when no URLs are given (and, unless
    SETPOINT_STATE_DIR is set, its workers' state, in `state/`), and where it writes `urls.json`, from which
    every command run in the same folder finds its servers. A relative folder is taken from where it is read."""

    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    """The least severe log lines the scheduler and workers print (`setpoint up` prints WARNING and above from
    them, and one line per change itself, unless `-v`)."""

    watch: bool = True
    """Whether workers watch what host-local resources manage (a File's path, a Workload's replicas, with inotify)
    and reconcile a resource the moment it changes; off, changes are healed at each resource's interval only."""

    watch_debounce_seconds: float = Field(0.02, ge=0, le=5)
    """Events for one resource within this time of its first are folded into one reconcile."""

    watch_max_folders: int = Field(10_000, ge=1)
    """The most folders one worker watches (each costs an inotify watch and a thread of about 20 KiB); beyond it,
    watching is degraded (logged once) and the rest is healed at its interval."""

    watch_resync_seconds: float = Field(30.0, gt=0)
    """How often a worker reloads its node's watches even without a notification (a resource moved to another
    node, a missed notification): the watcher's safety net, as the interval is the reconciles'."""

    webhook_timeout_seconds: float = Field(10.0, gt=0, le=300)
    """How long the webhook dispatcher waits for a receiver to answer a POST before it counts as a failed attempt."""

    webhook_retry_seconds: float = Field(3600.0, gt=0)
    """How long after its first attempt an event is retried before it is recorded failed and its webhook moves on:
    a receiver down for less than this gets everything afterwards, in order."""

    webhook_backoff_base_seconds: float = Field(1.0, gt=0)
    """The first delay before retrying a delivery; doubled at each failed attempt, with jitter."""

    webhook_backoff_max_seconds: float = Field(60.0, gt=0)
    """The longest delay between two attempts of one delivery."""

    webhook_concurrency: int = Field(8, ge=1, le=256)
    """How many webhooks the dispatcher sends to at once (a thread each): that many slow receivers at once can
    take every thread; each webhook has at most one delivery in flight."""

    webhook_recheck_seconds: float = Field(5.0, gt=0)
    """How often the dispatcher looks for events even without a notification (the safety net for a missed one)."""

    _url_origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("data_dir", "state_dir")
    @classmethod
    def _absolute_folder(cls, value: str) -> str:
        """A folder relative to where the process runs would differ between processes: made absolute at once."""
        return os.path.abspath(os.path.expanduser(value))

    @model_validator(mode="wrap")
    @classmethod
    def _find_servers(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Settings:
        """With no URL in the environment, use those of the `setpoint up` running in the data folder, if any."""
        given = {key for key in ("database_url", "broker_url") if isinstance(data, dict) and data.get(key)}
        found = None
        if isinstance(data, dict) and not given:
            folder = data.get("data_dir") or cls.model_fields["data_dir"].default
            found = urls.read(cls._absolute_folder(str(folder)))
            if found is not None:
                data = {**data, "database_url": found.database_url, "broker_url": found.broker_url}
        settings: Settings = handler(data)
        for key in ("database_url", "broker_url"):
            variable = f"SETPOINT_{key.upper()}"
            if key in given:
                settings._url_origins[key] = f"{variable} in the environment"
            elif found is not None:
                settings._url_origins[key] = found.origin
            else:
                settings._url_origins[key] = (
                    f"the default (no {variable} set, and no `setpoint up` running in {settings.data_dir})"
                )
        return settings

    @property
    def database_url_origin(self) -> str:
        """Where database_url came from: the environment, a running `setpoint up`'s URL file, or the default."""
        return self._url_origins.get("database_url", "given in code")

    @property
    def broker_url_origin(self) -> str:
        return self._url_origins.get("broker_url", "given in code")


@lru_cache(maxsize=1)
def get() -> Settings:
    """The process's settings, read from the environment the first time they are asked for."""
    return Settings()

"""docker-compose.yml cannot drift from the code: it validates, and each service's command, exactly as the
file writes it, runs here against the test database and broker. No container engine runs on this machine,
so the containers themselves are not started; the processes inside them are.

Together they make a working stack: the API takes a file, a worker reconciles it, and Flower (with the
file's basic auth) reports the task as succeeded.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Process, wait_for

ENV_FILE = ROOT / ".env.example"


def compose_config() -> dict[str, Any]:
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing; .ci/run installs Debian's package")
        pytest.skip("docker-compose (Debian's package) is not installed on this machine")
    done = subprocess.run(
        [tool, "--env-file", str(ENV_FILE), "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def http(url: str, headers: dict[str, str] | None = None, body: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError:
        return 0, None


def test_the_compose_file_is_valid_with_every_service_the_stack_needs() -> None:
    config = compose_config()
    services = config["services"]
    assert {"postgres", "redis", "migrate", "scheduler", "scheduler-standby", "worker", "flower", "api"} <= set(
        services
    )
    for name in ("scheduler", "worker", "flower", "api"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("scheduler", "scheduler-standby", "worker", "api"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert (
        "pg_isready" in services["postgres"]["healthcheck"]["test"]
        and "-h" in services["postgres"]["healthcheck"]["test"]
    )
    assert all(isinstance(s.get("command", []), list) for s in services.values()), "exec form, so signals arrive"


def test_every_service_command_runs_against_the_test_servers(fresh: dict, tmp_path: Path) -> None:
    # A database of its own: its schedulers must not find the session stack's leader already in place.
    database_url, broker_url = fresh["SETPOINT_DATABASE_URL"], fresh["SETPOINT_BROKER_URL"]
    services = compose_config()["services"]
    ours = {name: s for name, s in services.items() if s.get("image") == "setpoint:latest"}
    queue = f"setpoint-compose-{uuid.uuid4().hex[:8]}"
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])

    def env_of(name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SETPOINT_", "FLOWER_"))}
        env.update({k: str(v) for k, v in ours[name].get("environment", {}).items()})
        # The servers are this machine's test ones, not the compose network's.
        env.update(
            SETPOINT_DATABASE_URL=database_url,
            SETPOINT_BROKER_URL=broker_url,
            SETPOINT_QUEUE=queue,
            SETPOINT_STATE_DIR=str(tmp_path / "state"),
            PATH=path,
            PYTHONPATH=str(ROOT),
            SETPOINT_WORKER_METRICS_PORT="0",
            SETPOINT_SCHEDULER_METRICS_PORT="0",
        )
        return env

    migrate = subprocess.run(
        ours["migrate"]["command"], cwd=ROOT, env=env_of("migrate"), capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    Path("/var/lib/flower").mkdir(parents=True, exist_ok=True)
    running = {
        name: Process(ours[name]["command"], env_of(name), tmp_path / f"{name}.log")
        for name in ("scheduler", "scheduler-standby", "worker", "flower", "api")
    }
    try:
        wait_for(lambda: "ready." in running["worker"].output(), 60, "worker ready")
        leaders = wait_for(
            lambda: [n for n in ("scheduler", "scheduler-standby") if "leading" in running[n].output()],
            30,
            "a leading scheduler",
        )
        assert len(leaders) == 1, "one active scheduler, one standby"
        token = ours["api"]["environment"]["SETPOINT_API_TOKEN"]
        api = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: http("http://127.0.0.1:8000/healthz")[0] == 200, 30, "api answering")
        # Flower knows only the tasks whose events it saw: it must be listening before the reconcile.
        wait_for(lambda: http("http://127.0.0.1:5555/api/tasks", {})[0] == 401, 30, "Flower asking for its basic auth")
        user, password = ours["flower"]["environment"]["FLOWER_BASIC_AUTH"].split(":", 1)
        auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        wait_for(lambda: http("http://127.0.0.1:5555/api/workers?refresh=1", auth)[0] == 200, 30, "Flower up")
        target = tmp_path / "motd"
        name = f"compose-{uuid.uuid4().hex[:6]}"
        code, _ = http(
            "http://127.0.0.1:8000/v1/files",
            api,
            {"name": name, "spec": {"path": str(target), "content": "via compose"}},
        )
        assert code == 201
        wait_for(lambda: target.exists() and target.read_text() == "via compose", 30, "file written by the worker")

        def reconciled_in_flower() -> list[dict[str, Any]]:
            code, tasks = http("http://127.0.0.1:5555/api/tasks?limit=1000", auth)
            return [
                t
                for t in (tasks or {}).values()
                if code == 200
                and t["name"] == "setpoint.reconcile"
                and name in str(t["args"])
                and t["state"] == "SUCCESS"
            ]

        seen = wait_for(reconciled_in_flower, 30, "the reconcile, succeeded, in Flower")
        assert "File" in str(seen[0]["args"])
    finally:
        for process in running.values():
            process.stop()

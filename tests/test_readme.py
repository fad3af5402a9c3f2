"""The README tells the truth: its controller example, pasted into a package of one's own, works as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from models.database import make_engine
from tests.conftest import ROOT, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, sql, status


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_link_kind_runs_as_a_users_own_package(fresh: dict, tmp_path: Path) -> None:
    package = tmp_path / "site" / "mykinds"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "link.py").write_text(
        next(b for b in readme_blocks("python") if "class LinkController" in b)
        + "\n\nfrom worker import registry\n\nregistry.register(LinkController())\n"
    )
    env = {
        **fresh,
        "SETPOINT_CONTROLLERS": "mykinds.link",
        "PYTHONPATH": f"{fresh['PYTHONPATH']}:{tmp_path / 'site'}",
    }
    engine = make_engine(env["SETPOINT_DATABASE_URL"])
    sys.path.insert(0, str(tmp_path / "site"))
    try:  # the README's migration, run through Alembic's operations as `alembic upgrade` would
        migration: dict = {}
        exec(next(b for b in readme_blocks("python") if "def upgrade" in b), migration)
        with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
            migration["upgrade"]()
    finally:
        sys.path.remove(str(tmp_path / "site"))
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        link = tmp_path / "current"
        sql(engine, "INSERT INTO links (name, path, target) VALUES ('current', :p, '/etc/hostname')", p=str(link))
        wait_for(lambda: ready_at(engine, "current", 1, kind="Link"), 30, "link ready")
        assert link.is_symlink() and str(link.readlink()) == "/etc/hostname"
        sql(engine, "DELETE FROM links WHERE name = 'current'")
        wait_for(lambda: status(engine, "current", "Link") is None, 30, "link torn down")
        assert not link.is_symlink()
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()

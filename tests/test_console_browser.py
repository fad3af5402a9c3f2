"""The web console in a real browser: Debian's chromium driven by Selenium (no browser download), against a real
`setpoint api` (uvicorn) with a token and the session's real scheduler and worker.

In CI (CI set) chromium and chromium-driver must be installed (.ci/run installs them): the tests fail without
them. Elsewhere they are skipped, saying why. The fleet's screenshot is written to docs/console.png for the README.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from models.database import make_engine
from tests.conftest import ROOT, start_scheduler, start_worker, wait_for
from tests.helpers import sql
from tests.test_api_safety import api_env, serving_api

TOKEN = "browser-test-token-" + "q" * 24
CHROMIUM = os.environ.get("SETPOINT_TEST_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("SETPOINT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")


def _browser_or_skip() -> None:
    missing = [path for path in (CHROMIUM, DRIVER) if not shutil.which(path)]
    if missing:
        said = f"{' and '.join(missing)} not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser tests: {said}")
        pytest.skip(said)


@pytest.fixture(scope="module")
def base(database_url: str, stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real API with a token (and the session's stack running), its base URL."""
    _browser_or_skip()
    with api_on(database_url, tmp_path_factory.mktemp("console-api") / "api.log") as url:
        yield url


@contextlib.contextmanager
def api_on(database_url: str, log: Path) -> Iterator[str]:
    """`setpoint api` with a token over `database_url`, its base URL; no traceback logged by the end."""
    with serving_api({**api_env(database_url), "SETPOINT_API_TOKEN": TOKEN}, log) as url:
        yield url


@pytest.fixture(scope="module")
def browser(base: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0] if found else None


def text_of(driver: Any, element_id: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element = by_id(driver, element_id)
        return element.text if element is not None else ""
    except StaleElementReferenceException:  # replaced by a live update while read
        return ""


def sign_in(driver: Any, base: str, token: str = TOKEN, name: str = "alice") -> None:
    driver.get(f"{base}/console/")
    if by_id(driver, "token") is None:
        return  # signed in already
    by_id(driver, "token").send_keys(token)
    by_id(driver, "name").send_keys(name)
    by_id(driver, "token").submit()


def stay_marker(driver: Any) -> None:
    """Mark the loaded page: a reload would lose the mark."""
    driver.execute_script("window.__stayed = 'yes'")


def stayed(driver: Any) -> bool:
    return driver.execute_script("return window.__stayed") == "yes"


def test_a_wrong_token_is_refused_and_the_right_one_opens_the_console(base: str, browser: Any) -> None:
    browser.delete_all_cookies()
    sign_in(browser, base, token="not-the-token")
    assert "not the API's token" in text_of(browser, "login-error")
    assert by_id(browser, "token") is not None
    sign_in(browser, base)
    wait_for(lambda: browser.find_elements("css selector", "h1") and "Fleet" in browser.title, 10, "the fleet page")
    assert browser.get_cookie("setpoint_console")["httpOnly"] is True
    assert TOKEN not in browser.get_cookie("setpoint_console")["value"]


def test_a_resource_inserted_in_sql_appears_without_a_reload_and_turns_ready(
    base: str, browser: Any, engine: Engine, unique: str, tmp_path: Path
) -> None:
    sign_in(browser, base)
    browser.get(f"{base}/console/?name={unique}")
    wait_for(lambda: text_of(browser, "live-status") == "Live", 10, "the event stream open")
    stay_marker(browser)
    sql(engine, "INSERT INTO files (name, path, content) VALUES (:n, :p, 'hi')", n=unique, p=str(tmp_path / "f"))
    row = f"row-File-{unique}"
    # Sooner than the page's own refresh (every 15 s while the stream is open): the Ready event brought it.
    wait_for(lambda: " yes Ready " in f" {text_of(browser, row)} ", 12, "the new row, ready, on the open page")
    assert stayed(browser), "the page was reloaded"


def test_reconcile_now_asks_for_confirmation_and_updates_the_last_reconcile(
    base: str, browser: Any, engine: Engine, unique: str, tmp_path: Path
) -> None:
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'hi', 3600)",
        n=unique,
        p=str(tmp_path / "f"),
    )
    wait_for(lambda: _ready(engine, unique), 20, "the file ready")
    sign_in(browser, base)
    browser.get(f"{base}/console/r/File/{unique}")
    before = text_of(browser, "last-reconcile")
    assert before and before != "never"
    by_id(browser, "action-reconcile").click()
    dialog = by_id(browser, "confirm-reconcile")
    wait_for(lambda: dialog.is_displayed(), 5, "the confirmation dialog")
    by_id(browser, "confirm-reconcile-yes").click()
    wait_for(lambda: by_id(browser, "done") is not None, 10, "the action acknowledged")
    after = wait_for(
        lambda: (now := text_of(browser, "last-reconcile")) and now != before and now, 20, "a newer last reconcile"
    )
    assert after > before  # both are 'YYYY-MM-DD HH:MM:SS UTC (…)'


def _ready(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        query = text("SELECT ready FROM resource_status WHERE kind = 'File' AND name = :n")
        return bool(conn.execute(query, {"n": name}).scalar())


def test_a_tampered_file_shows_its_drift_on_the_open_page(
    base: str, browser: Any, engine: Engine, unique: str, tmp_path: Path
) -> None:
    path = tmp_path / "motd"
    sql(engine, "INSERT INTO files (name, path, content) VALUES (:n, :p, 'as declared')", n=unique, p=str(path))
    wait_for(lambda: _ready(engine, unique), 20, "the file ready")
    sign_in(browser, base)
    browser.get(f"{base}/console/r/File/{unique}")
    wait_for(lambda: text_of(browser, "live-status") == "Live", 10, "the event stream open")
    stay_marker(browser)
    path.write_text("hot fix")
    drift = wait_for(lambda: text_of(browser, "drift-events"), 20, "the drift on the page")
    assert "DriftCorrected" in drift and "write" in drift
    assert stayed(browser)


def test_fleet_screenshot_for_the_readme(browser: Any, fresh: dict[str, str], tmp_path: Path) -> None:
    """A small fleet in the states a person would look for, drawn as the README shows it, on a database and stack of
    its own: every count on the page (the chart's too) is this fleet's."""
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    try:
        with api_on(fresh["SETPOINT_DATABASE_URL"], tmp_path / "api.log") as base:
            _draw_the_fleet(browser, base, engine)
    finally:
        scheduler.stop()
        worker.stop()
        engine.dispose()


def _draw_the_fleet(browser: Any, base: str, engine: Engine) -> None:
    folder = Path(f"/tmp/sp-{uuid.uuid4().hex[:4]}")
    folder.mkdir()
    site = '{"site": "demo"}'
    files = [
        ("motd", "motd", "Hello", False),
        ("app-conf", "app.conf", "port = 8080", False),
        ("nginx-site", "nginx.conf", "server {}", False),
        ("cron-backup", "cron", "@daily backup", True),
    ]
    try:
        for name, path, content, paused in files:
            sql(
                engine,
                "INSERT INTO files (name, path, content, paused, labels) "
                "VALUES (:n, :p, :c, :paused, CAST(:l AS jsonb))",
                n=name,
                p=str(folder / path),
                c=content,
                paused=paused,
                l=site,
            )
        sql(engine, "INSERT INTO files (name, path, labels) VALUES ('tmp-folder', '/tmp', CAST(:l AS jsonb))", l=site)
        sql(
            engine,
            "INSERT INTO workloads (name, command, replicas, depends_on, labels) VALUES "
            "('web', 'python3 -m http.server 0', 2, '{File/app-conf}', CAST(:l AS jsonb)), "
            "('worker', 'python3 -m http.server 0', 1, '{File/queue-conf}', CAST(:l AS jsonb))",
            l=site,
        )
        wait_for(lambda: _ready(engine, "app-conf") and _ready(engine, "motd"), 60, "the files ready")
        sign_in(browser, base)
        browser.get(f"{base}/console/?label=site%3Ddemo")
        wait_for(lambda: "web" in text_of(browser, "fleet-body"), 20, "the fleet drawn")
        wait_for(lambda: "Workload" in text_of(browser, "fleet-body") and _ready_workload(engine), 30, "web ready")
        browser.get(f"{base}/console/?label=site%3Ddemo")
        browser.set_window_size(1440, 1000)
        (ROOT / "docs").mkdir(exist_ok=True)
        browser.save_screenshot(str(ROOT / "docs" / "console.png"))
        assert (ROOT / "docs" / "console.png").stat().st_size > 10_000
    finally:
        sql(engine, "DELETE FROM workloads WHERE name IN ('web', 'worker')")
        sql(engine, "DELETE FROM files WHERE name IN ('motd', 'app-conf', 'nginx-site', 'cron-backup', 'tmp-folder')")
        wait_for(lambda: not any(folder.iterdir()) or None, 20, "the files removed")
        shutil.rmtree(folder, ignore_errors=True)


def _ready_workload(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT ready FROM resource_status WHERE name = 'web'")).scalar())

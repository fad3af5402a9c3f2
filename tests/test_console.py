"""The web console without a browser: sign-in, sessions, CSRF and origin checks, read-only mode, the fleet's
filters and pages, the resource page, and that no secret value is ever shown (HTTP through Starlette's client).

Resources are written in SQL with their next reconcile a day away (the session's stack leaves them alone) unless a
test needs a worker's status.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.app import create_app
from resources import secrets
from setpoint.settings import Settings
from tests.conftest import wait_for
from tests.helpers import sql, unwatched
from tests.test_api_safety import api_env, setpoint_api
from tests.test_roles import login

role_logins = login  # the fixture, by a name of ours: an engine logged in as each role

TOKEN = "console-test-token-" + "y" * 24
ORIGIN = {"Origin": "http://testserver"}
LOCAL = "http://127.0.0.1:8000"
"""Without a token only a loopback Host is served (DNS rebinding): these tests reach it by that name."""
LOCAL_ORIGIN = {"Origin": LOCAL}


@pytest.fixture(scope="module")
def locked(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=database_url, api_token=TOKEN))) as client:
        yield client


def sign_in(client: TestClient, name: str = "alice") -> None:
    answer = client.post("/console/login", data={"token": TOKEN, "name": name}, headers=ORIGIN, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "no CSRF token in the page"
    return found.group(1)


def a_file(engine: Engine, name: str, **labels: str) -> None:
    import json

    unwatched(
        engine,
        "INSERT INTO files (name, path, content, labels) VALUES (:n, :p, 'x', CAST(:l AS jsonb))",
        name,
        p=f"/tmp/{name}",
        l=json.dumps(labels),
    )


def test_the_console_asks_for_the_token_once_and_refuses_a_wrong_one(database_url: str) -> None:
    with TestClient(create_app(Settings(database_url=database_url, api_token=TOKEN))) as client:
        first = client.get("/console/?kind=File", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"].startswith("/console/login?next=")
        wrong = client.post("/console/login", data={"token": "guess"}, headers=ORIGIN, follow_redirects=False)
        assert wrong.status_code == 401
        assert "not the API&#39;s token" in wrong.text and "setpoint_console" not in wrong.headers.get("set-cookie", "")
        right = client.post(
            "/console/login",
            data={"token": TOKEN, "name": "alice", "next": "/console/?kind=File"},
            headers=ORIGIN,
            follow_redirects=False,
        )
        assert right.status_code == 303 and right.headers["location"] == "/console/?kind=File"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie and "Secure" not in cookie  # plain http here; https gets Secure
        assert client.get("/console/").status_code == 200


def test_sign_in_from_another_site_and_a_foreign_next_are_refused(database_url: str) -> None:
    with TestClient(create_app(Settings(database_url=database_url, api_token=TOKEN))) as client:
        elsewhere = {"Origin": "https://evil.example"}
        assert client.post("/console/login", data={"token": TOKEN}, headers=elsewhere).status_code == 403
        answer = client.post(
            "/console/login", data={"token": TOKEN, "next": "https://evil.example/"}, headers=ORIGIN,
            follow_redirects=False,
        )  # fmt: skip
        assert answer.headers["location"] == "/console/"


def test_the_session_opens_the_console_and_the_event_stream_and_nothing_else(locked: TestClient) -> None:
    assert locked.get("/v1/events", params={"stream": "false"}).status_code == 401
    sign_in(locked)
    assert locked.get("/v1/events", params={"stream": "false"}).status_code == 200
    assert locked.get("/v1/files").status_code == 401
    assert locked.get("/openapi.json").status_code == 401
    assert locked.post("/v1/files", json={"name": "x", "spec": {"path": "/tmp/x"}}).status_code == 401
    assert locked.get("/v1/files", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_forged_or_tampered_cookie_is_no_session(database_url: str) -> None:
    with TestClient(create_app(Settings(database_url=database_url, api_token=TOKEN))) as client:
        sign_in(client)
        value = client.cookies["setpoint_console"]
        payload, _, signature = value.rpartition(".")
        client.cookies.clear()
        client.cookies.set("setpoint_console", payload + "." + "0" * len(signature))
        assert client.get("/console/", follow_redirects=False).status_code == 303
        assert client.get("/v1/events", params={"stream": "false"}).status_code == 401
    with TestClient(create_app(Settings(database_url=database_url, api_token="another-token-" + "z" * 20))) as other:
        other.cookies.set("setpoint_console", value)  # signed for another token
        assert other.get("/console/", follow_redirects=False).status_code == 303


def test_pause_and_resume_need_the_csrf_token_and_this_origin_and_are_recorded_as_the_user(
    locked: TestClient, engine: Engine, unique: str
) -> None:
    a_file(engine, unique)
    sign_in(locked, "alice")
    page = f"/console/r/File/{unique}"
    token = csrf(locked, page)
    action = f"{page}/pause"
    assert locked.post(action, data={"csrf": "nope"}, headers=ORIGIN).status_code == 403
    assert locked.post(action, data={"csrf": token}, headers={"Origin": "https://evil.example"}).status_code == 403
    assert locked.post(action, data={"csrf": token}).status_code == 403  # neither Origin nor Referer
    assert not paused(engine, unique)
    done = locked.post(action, data={"csrf": token}, headers=ORIGIN, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"{page}?done=pause"
    assert paused(engine, unique)
    with engine.connect() as conn:
        who = conn.execute(
            text("SELECT actor, reason FROM changes WHERE kind = 'File' AND name = :n ORDER BY id DESC LIMIT 1"),
            {"n": unique},
        ).one()
    assert who.actor == "console:token/alice" and who.reason == "pause from the web console"
    shown = locked.get(page).text
    assert "console:token/alice" in shown and 'id="paused">yes' in shown and "Resume" in shown
    locked.post(f"{page}/resume", data={"csrf": token}, headers={"Referer": f"http://testserver{page}"})
    assert not paused(engine, unique)


def test_reconcile_now_makes_it_due_and_the_confirm_page_works_without_script(
    locked: TestClient, engine: Engine, unique: str
) -> None:
    a_file(engine, unique)
    sign_in(locked)
    confirm = locked.get(f"/console/r/File/{unique}/reconcile")
    assert confirm.status_code == 200 and "Reconcile now: File/" in confirm.text
    token = re.search(r'name="csrf" value="([^"]+)"', confirm.text)
    assert token
    locked.post(f"/console/r/File/{unique}/reconcile", data={"csrf": token.group(1)}, headers=ORIGIN)
    with engine.connect() as conn:
        due = conn.execute(
            text("SELECT next_reconcile_at < now() + interval '1 hour' FROM statuses WHERE name = :n"), {"n": unique}
        ).scalar()
    assert due


def paused(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT paused FROM files WHERE name = :n"), {"n": name}).scalar())


def test_without_a_token_the_console_is_read_only(database_url: str, engine: Engine, unique: str) -> None:
    a_file(engine, unique)
    app = create_app(Settings(database_url=database_url, api_token=None), insecure_no_auth=True)
    with TestClient(app, base_url=LOCAL) as client:
        page = client.get(f"/console/r/File/{unique}")
        assert page.status_code == 200 and "read-only" in page.text and "Reconcile now" not in page.text
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is None
        refused = client.post(f"/console/r/File/{unique}/pause", data={"csrf": "x"}, headers=LOCAL_ORIGIN)
        assert refused.status_code == 403 and "read-only" in refused.text
        assert client.get(f"/console/r/File/{unique}/pause").status_code == 403
    assert not paused(engine, unique)


def test_console_actions_flag_allows_actions_without_a_token(database_url: str, engine: Engine, unique: str) -> None:
    a_file(engine, unique)
    app = create_app(Settings(database_url=database_url, api_token=None), insecure_no_auth=True, console_actions=True)
    with TestClient(app, base_url=LOCAL) as client:
        token = csrf(client, f"/console/r/File/{unique}")
        said = client.post(f"/console/r/File/{unique}/pause", data={"csrf": token}, headers=LOCAL_ORIGIN)
        assert said.status_code == 200
    assert paused(engine, unique)
    with engine.connect() as conn:
        actor = conn.execute(
            text("SELECT actor FROM changes WHERE name = :n ORDER BY id DESC LIMIT 1"), {"n": unique}
        ).scalar()
    assert actor == "console:anonymous"


def test_console_actions_is_refused_with_a_token_or_without_insecure_no_auth(database_url: str) -> None:
    env = api_env(database_url)
    alone = setpoint_api(env, "--console-actions")
    assert alone.returncode == 2
    assert "needs --insecure-no-auth too" in alone.stdout + alone.stderr and "or set SETPOINT_API_TOKEN" in alone.stderr
    tokened = setpoint_api({**env, "SETPOINT_API_TOKEN": TOKEN}, "--console-actions", "--insecure-no-auth")
    assert tokened.returncode == 2


def test_the_fleet_pages_and_filters_by_kind_phase_label_and_name(locked: TestClient, engine: Engine) -> None:
    prefix = f"pg-{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO files (name, path, content, labels) SELECT :p || '-' || lpad(i::text, 3, '0'), "
                "'/tmp/' || :p || i, 'x', jsonb_build_object('team', CASE WHEN i % 2 = 0 THEN 'web' ELSE 'db' END) "
                "FROM generate_series(1, 250) AS i"
            ),
            {"p": prefix},
        )
        conn.execute(
            text("UPDATE statuses SET next_reconcile_at = now() + interval '1 day' WHERE starts_with(name, :p)"),
            {"p": prefix},
        )
        conn.execute(text("UPDATE statuses SET phase = 'Failed' WHERE name = :n"), {"n": f"{prefix}-007"})
    sign_in(locked)

    def names(**query: str) -> list[str]:
        page = locked.get("/console/", params=query)
        assert page.status_code == 200
        return re.findall(rf'<a href="/console/r/File/({prefix}-\d+)">', page.text)

    first = names(name=prefix)
    assert len(first) == 100 and first[0] == f"{prefix}-001"
    third = names(name=prefix, page="3")
    assert len(third) == 50 and third[-1] == f"{prefix}-250"
    assert "page 3 of 3" in locked.get("/console/", params={"name": prefix, "page": "3"}).text
    assert names(name=prefix, phase="Failed") == [f"{prefix}-007"]
    assert len(names(name=prefix, label="team=web", page="2")) == 25
    assert len(names(name=prefix, label="team", page="3")) == 50
    assert names(name=prefix, label="team=nobody") == []
    assert names(name=prefix, kind="Workload") == []
    unknown = locked.get("/console/", params={"kind": "gadget"})
    assert "unknown kind &#39;gadget&#39;" in unknown.text
    fragment = locked.get("/console/fragment/fleet", params={"name": prefix, "phase": "Failed"})
    assert fragment.status_code == 200 and "<html" not in fragment.text and f"{prefix}-007" in fragment.text


def test_the_pages_forbid_framing_and_foreign_scripts(locked: TestClient) -> None:
    sign_in(locked)
    page = locked.get("/console/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert locked.get("/console/static/console.js").status_code == 200


def test_no_secret_value_is_shown(
    stack: dict[str, str], locked: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    value = f"hunter2-{uuid.uuid4().hex}"
    secrets.put(engine, f"{unique}-pw", value)
    path = tmp_path / "conf"
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, :c, 1)",
        n=unique,
        p=str(path),
        c=f"password={{{{ Secret/{unique}-pw }}}}\n",
    )
    wait_for(lambda: path.exists() and value in path.read_text(), 30, "the file written with the secret")
    path.write_text("password=tampered\n")  # drift: the worker puts it back, and reports what differed
    wait_for(lambda: value in path.read_text(), 30, "the file put back")
    sign_in(locked)
    shown = [
        locked.get("/console/", params={"name": unique}).text,
        locked.get(f"/console/r/File/{unique}").text,
        locked.get(f"/console/fragment/r/File/{unique}").text,
    ]
    assert f"Secret/{unique}-pw" in shown[1]
    for page in shown:
        assert value not in page


def test_the_not_ready_chart_follows_the_events_of_the_last_hour(engine: Engine, unique: str) -> None:
    from datetime import UTC, datetime

    from api import console_data

    with engine.begin() as conn:
        for minutes_ago, happened in ((30, "Failed"), (10, "Ready")):
            conn.execute(
                text(
                    "INSERT INTO events (id, at, kind, name, type) VALUES "
                    "(nextval('events_id_seq'), now() - make_interval(mins => :m), 'File', :n, :t)"
                ),
                {"m": minutes_ago, "n": unique, "t": happened},
            )
    points = [count for _, count in console_data.not_ready_chart(engine, datetime.now(UTC)).points]
    assert len(points) == 61
    assert points[35] - points[25] == 1  # failed 30 minutes ago
    assert points[55] - points[45] == -1  # ready again 10 minutes ago


def test_everything_the_console_reads_works_with_the_api_role(
    role_logins: dict[str, Engine], engine: Engine, unique: str
) -> None:
    """As in the compose deployment, where the API (and so the console) logs in as setpoint_api."""
    from datetime import UTC, datetime

    from api import console_data
    from resources.kinds import resolve

    a_file(engine, unique)
    api = role_logins["setpoint_api"]
    page = console_data.fleet(api, console_data.Filters(name=unique))
    assert [row.name for row in page.rows] == [unique]
    console_data.not_ready_chart(api, datetime.now(UTC))
    found = console_data.resource(api, resolve("File"), unique)
    assert found.changes and found.document["name"] == unique


def test_a_resource_made_this_hour_and_never_ready_counts_from_when_it_was_made(engine: Engine, unique: str) -> None:
    from datetime import UTC, datetime, timedelta

    from api import console_data

    later = datetime.now(UTC) + timedelta(minutes=20)  # the chart drawn 20 minutes from now: made at minute 40
    before = [count for _, count in console_data.not_ready_chart(engine, later).points]
    a_file(engine, unique)  # pending: its next reconcile is a day away
    after = [count for _, count in console_data.not_ready_chart(engine, later).points]
    assert (after[35] - before[35], after[45] - before[45]) == (0, 1)


def test_over_https_the_session_cookie_is_secure(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, api_token=TOKEN))
    with TestClient(app, base_url="https://console.example") as client:
        answer = client.post(
            "/console/login",
            data={"token": TOKEN},
            headers={"Origin": "https://console.example"},
            follow_redirects=False,
        )
        assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]


# What the review of issue 17 found (its proofs, from branch review17, folded in), and the fixes' own tests.


@pytest.fixture()
def own(database_url: str) -> Iterator[TestClient]:
    """A console with a token, its own sessions and sign-in back-off; a 500 is answered, not raised."""
    app = create_app(Settings(database_url=database_url, api_token=TOKEN))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_signing_out_ends_the_session_not_just_the_browsers_copy(own: TestClient) -> None:
    sign_in(own)
    copied = own.cookies["setpoint_console"]
    token = csrf(own, "/console/")
    assert own.post("/console/logout", data={"csrf": token}, headers=ORIGIN, follow_redirects=False).status_code == 303
    own.cookies.set("setpoint_console", copied)  # a copy taken before signing out (another tab, a proxy log ...)
    assert own.get("/console/", follow_redirects=False).status_code == 303, "the signed-out cookie still opens it"
    assert own.get("/v1/events", params={"stream": "false"}).status_code == 401
    sign_in(own)  # a new session is not the one signed out
    assert own.get("/console/", follow_redirects=False).status_code == 200


def test_signed_out_sessions_are_bounded_past_that_everyone_signs_in_again() -> None:
    from api import console_session

    sessions = console_session.Sessions(TOKEN)
    kept, kept_cookie = sessions.issue("token/bob")
    for _ in range(console_session.MAX_SIGNED_OUT + 1):
        sessions.sign_out(sessions.issue("token")[0])
    assert len(sessions.signed_out) <= console_session.MAX_SIGNED_OUT
    assert sessions.read(kept_cookie) is None  # the key was renewed: fail closed, never forget a sign-out
    assert sessions.read(sessions.issue("token")[1]) is not None


@pytest.mark.parametrize("cookie", ["abc.\u00e9", "e30=.\u00e9\u00e9"])
def test_a_non_ascii_cookie_is_no_session_rather_than_a_500(own: TestClient, cookie: str) -> None:
    raw = [(b"cookie", f"setpoint_console={cookie}".encode())]  # as a browser may send it (curl -H proves it too)
    assert own.get("/console/", headers=raw, follow_redirects=False).status_code == 303
    assert own.get("/v1/events", headers=raw, params={"stream": "false"}).status_code == 401


def test_a_non_ascii_csrf_token_is_refused_rather_than_a_500(own: TestClient, engine: Engine, unique: str) -> None:
    a_file(engine, unique)
    sign_in(own)
    answer = own.post(f"/console/r/File/{unique}/pause", data={"csrf": "\u00e9"}, headers=ORIGIN)
    assert answer.status_code == 403 and "CSRF token" in answer.text
    assert not paused(engine, unique)


def test_a_form_with_many_fields_is_refused_rather_than_a_500(own: TestClient) -> None:
    fields = {f"f{i}": "1" for i in range(20)}
    answer = own.post("/console/login", data=fields, headers=ORIGIN)
    assert answer.status_code == 413 and "at most 16 fields" in answer.text
    big = own.post("/console/login", data={"token": "x" * 20_000}, headers=ORIGIN)
    assert big.status_code == 413 and "bytes" in big.text


def test_without_a_token_a_foreign_host_cannot_act_dns_rebinding(
    database_url: str, engine: Engine, unique: str
) -> None:
    """A page on rebind.example whose name the attacker re-points at 127.0.0.1 is same-origin to the browser: Origin
    and Host both say rebind.example, so the Host-based origin check passes; only a Host allow-list stops it."""
    a_file(engine, unique)
    app = create_app(Settings(database_url=database_url, api_token=None), insecure_no_auth=True, console_actions=True)
    with TestClient(app, base_url=LOCAL) as ours:
        token = csrf(ours, f"/console/r/File/{unique}")
        cookie = ours.cookies["setpoint_console"]
    foreign = {"Origin": "http://rebind.example:8000"}
    with TestClient(app, base_url="http://rebind.example:8000") as c:
        c.cookies.set("setpoint_console", cookie)
        assert c.get(f"/console/r/File/{unique}").status_code == 400
        assert c.post(f"/console/r/File/{unique}/pause", data={"csrf": token}, headers=foreign).status_code == 400
        assert c.get("/v1/files").status_code == 400  # the whole API, not only the console
    assert not paused(engine, unique), "a page of another site paused it"
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        with TestClient(app, base_url=f"http://{host}") as local:
            assert local.get("/v1/files").status_code == 200, host


def test_a_nul_in_a_filter_or_a_name_is_said_on_the_page_naming_the_field(
    own: TestClient, engine: Engine, unique: str
) -> None:
    sign_in(own)
    for field in ("name", "label"):
        answer = own.get("/console/", params={field: "a\x00b"})
        assert answer.headers["content-type"].startswith("text/html"), answer.text
        assert answer.status_code == 200 and f"The {field} filter must not contain a NUL" in answer.text
    token = csrf(own, "/console/")
    acted = own.post("/console/r/File/a%00b/pause", data={"csrf": token}, headers=ORIGIN)
    assert acted.status_code == 422 and acted.headers["content-type"].startswith("text/html")
    assert "The resource name must not contain a NUL" in acted.text
    assert own.get("/console/r/File/a%00b").status_code == 422


def test_an_unknown_kind_or_action_is_named(own: TestClient, unique: str) -> None:
    sign_in(own)
    token = csrf(own, "/console/")
    kind = own.post(f"/console/r/Nope/{unique}/reconcile", data={"csrf": token}, headers=ORIGIN)
    assert kind.status_code == 404 and "There is no kind &#39;Nope&#39;" in kind.text
    action = own.post(f"/console/r/File/{unique}/explode", data={"csrf": token}, headers=ORIGIN)
    assert action.status_code == 404 and "There is no action &#39;explode&#39;" in action.text


def test_wrong_tokens_back_off_the_address_and_are_logged_once(
    own: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    from api import console_signin

    for _ in range(console_signin.MAX_FAILURES):
        assert own.post("/console/login", data={"token": "guess"}, headers=ORIGIN).status_code == 401
    with caplog.at_level("WARNING", logger="setpoint.console"):
        for _ in range(3):
            refused = own.post("/console/login", data={"token": TOKEN}, headers=ORIGIN, follow_redirects=False)
            assert refused.status_code == 429 and "Too many wrong tokens" in refused.text
            assert 1 <= int(refused.headers["Retry-After"]) <= console_signin.WINDOW_S
    assert [r.message for r in caplog.records].count("console sign-in backed off") == 1


def test_the_back_off_forgets_a_window_later_and_tracks_a_bounded_number_of_addresses() -> None:
    from api import console_signin

    limit = console_signin.SignInLimit()
    for _ in range(console_signin.MAX_FAILURES):
        limit.failed("10.0.0.1", now=100.0)
    assert limit.retry_after_s("10.0.0.1", now=130.0) == 30
    assert limit.retry_after_s("10.0.0.1", now=100.0 + console_signin.WINDOW_S) is None
    for i in range(console_signin.MAX_ADDRESSES + 5):
        limit.failed(f"addr-{i}", now=200.0)
    assert len(limit.seen) == console_signin.MAX_ADDRESSES


def test_the_resource_fragment_carries_the_actions_as_they_are_now(
    own: TestClient, engine: Engine, unique: str
) -> None:
    """The live refresh replaces the fragment: a resource paused elsewhere offers Resume, not Pause."""
    a_file(engine, unique)
    sign_in(own)
    assert 'id="action-pause"' in own.get(f"/console/fragment/r/File/{unique}").text
    unwatched(engine, "UPDATE files SET paused = true WHERE name = :n", unique)
    again = own.get(f"/console/fragment/r/File/{unique}").text
    assert 'id="action-resume"' in again and 'id="action-pause"' not in again
    assert re.search(r"<button[^>]*autofocus[^>]*>Cancel</button>", again), "the dialog must focus Cancel"


def test_reconcile_now_is_recorded_as_the_users_change_from_the_console_the_cli_and_the_api_role(
    locked: TestClient, engine: Engine, role_logins: dict[str, Engine], database_url: str, unique: str
) -> None:
    import json
    import subprocess
    import sys

    from models import change
    from resources import documents
    from resources.kinds import resolve
    from tests.conftest import ROOT

    a_file(engine, unique)
    sign_in(locked, "alice")
    token = csrf(locked, f"/console/r/File/{unique}")
    locked.post(f"/console/r/File/{unique}/reconcile", data={"csrf": token}, headers=ORIGIN)
    with change.acting("api:someone", "as the compose deployment's API role"):
        documents.reconcile_now(change.track(role_logins["setpoint_api"]), resolve("File"), unique)
    env = api_env(database_url)
    cli = [sys.executable, "-m", "setpoint.cli"]
    done = subprocess.run(
        [*cli, "reconcile", "file", unique, "--reason", "look again"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    shown = subprocess.run(
        [*cli, "history", "file", unique, "-o", "json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    said = [(e["operation"], e["actor"], e["reason"]) for e in json.loads(shown.stdout)]
    assert said[:3] == [
        ("reconcile", f"cli:{__import__('getpass').getuser()}", "look again"),
        ("reconcile", "api:someone", "as the compose deployment's API role"),
        ("reconcile", "console:token/alice", "reconcile now from the web console"),
    ]
    assert said[3][0] == "insert"
    page = locked.get(f"/console/r/File/{unique}").text
    assert "console:token/alice" in page and "<td>reconcile</td>" in page and "none (reconcile now)" in page


def test_a_short_token_is_warned_about_at_start_but_still_served(database_url: str, tmp_path: Path) -> None:
    import sys

    import httpx2 as httpx

    from tests.conftest import Process, wait_for
    from tests.test_api_safety import free_port

    port = free_port()
    env = {**api_env(database_url), "SETPOINT_API_TOKEN": "short-token"}
    api = Process([sys.executable, "-m", "setpoint.cli", "api", "--port", str(port)], env, tmp_path / "api.log")
    try:
        wait_for(lambda: "SETPOINT_API_TOKEN is short" in api.output() or api.popen.poll() is not None, 30, "warned")
        assert "SETPOINT_API_TOKEN is short" in api.output() and "short-token" not in api.output()

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, "served")
    finally:
        api.stop()

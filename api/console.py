"""The web console at `/console`: the fleet at a glance, one resource in full, and reconcile / pause / resume.

Pages are rendered on the server (Jinja2, api/templates/) with a little JavaScript (api/static/console.js) that
follows `GET /v1/events` and re-fetches the part of the page an event touches; without JavaScript every page and
action still works. Sessions, CSRF tokens and the origin check are api/console_session.py's; what is shown is read
by api/console_data.py. Every change made here is recorded as `console:<identity>`.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api import console_data, console_pictures, console_signin
from api.console_session import COOKIE, LIFETIME_S, Session, Sessions, identity, same_origin, secure
from models import change
from models.status import PHASES
from resources import documents, events
from resources.kinds import all_kinds
from setpoint.errors import NotFound

log = logging.getLogger("setpoint.console")

HERE = Path(__file__).resolve().parent
PREFIX = "/console"
ACTIONS = {
    "reconcile": ("Reconcile now", "The scheduler sends it to a worker within a moment, instead of at its interval."),
    "pause": ("Pause", "Drift is still observed and reported, but nothing is changed until it is resumed."),
    "resume": ("Resume", "It is reconciled again: drift found while paused is corrected."),
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""No page of the console may be framed by another site (a confirm button under someone else's page), load a
script from elsewhere, or be cached."""
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 16
CHART_TTL_S = 10.0


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    if seconds < 120:
        return f"{max(seconds, 0):.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _utc(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _when(text_: str | None) -> datetime | None:
    return datetime.fromisoformat(text_) if text_ else None


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["when"] = _when
    env.filters["json"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return env


@dataclasses.dataclass
class Console:
    engine: Engine
    sessions: Sessions
    token: str | None
    writable: bool
    """Whether actions are offered: with a token (to a signed-in user), or without one if the server was started
    with --console-actions."""
    templates: jinja2.Environment = dataclasses.field(default_factory=_templates)

    _chart: tuple[float, console_data.Chart] | None = None

    async def chart(self, now: datetime) -> console_data.Chart:
        """The not-ready chart, its past minutes drawn at most every CHART_TTL_S (every tab's live refresh would
        otherwise read the hour's events again), its last point always counted afresh."""
        if self._chart is None or time.monotonic() - self._chart[0] > CHART_TTL_S:
            drawn = await run_in_threadpool(console_data.not_ready_chart, self.engine, now)
            self._chart = (time.monotonic(), drawn)
            return drawn
        # The minutes past may be 10 s old; the count now is always today's (it is what the rows below show).
        cached = self._chart[1]
        current = await run_in_threadpool(console_data.not_ready_now, self.engine)
        return console_data.Chart([*cached.points[:-1], (now, current)], cached.partial)

    def session(self, request: Request) -> Session | None:
        return self.sessions.of(request)

    def render(
        self, template: str, request: Request, session: Session | None, http_status: int = 200, **values: Any
    ) -> Response:
        page = self.templates.get_template(template).render(
            prefix=PREFIX,
            static=f"{PREFIX}/static",
            session=session,
            csrf=self.sessions.csrf(session) if session else "",
            token_mode=bool(self.token),
            writable=self.writable and session is not None,
            event_types=list(events.TYPES),
            now=datetime.now(UTC),
            ago=_ago,
            **values,
        )
        response = HTMLResponse(page, status_code=http_status, headers=HEADERS)
        issued = getattr(request.state, "console_cookie", None)
        if issued is not None:
            set_cookie(response, request, issued)
        return response

    def viewer(self, request: Request) -> Session | Response:
        """The visitor's session; without a token, an anonymous one is given. With a token and no valid session,
        a page answers with the sign-in page's address, a fragment with 401 (its script then reloads the page)."""
        session = self.session(request)
        if session is not None:
            return session
        if not self.token:
            session, request.state.console_cookie = self.sessions.issue("anonymous")
            return session
        if request.url.path.startswith(f"{PREFIX}/fragment/"):
            return Response("sign in again", status_code=401, headers=HEADERS)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}", status_code=303)

    def refuse(self, request: Request, session: Session | None, status: int, title: str, said: str) -> Response:
        return self.render("message.html", request, session, http_status=status, title=title, message=said)


def set_cookie(response: Response, request: Request, cookie: str) -> None:
    """The session's cookie: out of scripts' reach, never sent by another site's request, HTTPS-only over HTTPS."""
    response.set_cookie(
        COOKIE, cookie, max_age=LIFETIME_S, path="/", httponly=True, samesite="strict", secure=secure(request)
    )


class FormTooLarge(Exception):
    """The console's forms have a few short fields: this one is larger, so it is not one of them."""


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (the console's only kind), read without a multipart parser; at most MAX_FORM_BYTES and
    MAX_FORM_FIELDS, else FormTooLarge."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge(f"a console form has at most {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise FormTooLarge(f"a console form has at most {MAX_FORM_FIELDS} fields") from None
    return {key: values[0] for key, values in parsed.items()}


def _nul(field: str) -> str:
    return f"The {field} must not contain a NUL character (\\0): nothing was looked up."


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only, never another site."""
    if target and target.startswith(f"{PREFIX}") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


def _filters(request: Request) -> tuple[console_data.Filters, int, str | None]:
    """The fleet's filters from the query; an unknown kind or phase is said, and left out."""
    query = request.query_params
    problem = None
    kind = (query.get("kind") or "").strip() or None
    if kind:
        try:
            kind = next(k.name for k in all_kinds().values() if kind.lower() in (k.name.lower(), k.plural))
        except StopIteration:
            problem, kind = f"unknown kind {kind!r}; known kinds: {', '.join(all_kinds())}", None
    phase = (query.get("phase") or "").strip() or None
    if phase and phase not in PHASES:
        problem, phase = f"unknown phase {phase!r}; phases: {', '.join(PHASES)}", None
    try:
        page = max(1, int(query.get("page") or 1))
    except ValueError:
        page = 1
    label = (query.get("label") or "").strip()[:253] or None
    name = (query.get("name") or "").strip()[:253] or None
    if label and "\x00" in label:
        problem, label = _nul("label filter"), None
    if name and "\x00" in name:
        problem, name = _nul("name filter"), None
    return console_data.Filters(kind, phase, label, name), page, problem


def mount(app: FastAPI, engine: Engine, *, token: str | None, actions: bool) -> Sessions:
    """Add the console's routes and static files to `app`; returns its sessions (the bearer middleware lets a
    valid session cookie through to the event stream)."""
    console = Console(engine, Sessions(token), token, bool(token) or actions)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router(console))

    async def too_large(request: Request, error: Exception) -> Response:
        said = f"Nothing was done: {error}, and this one has more. Reload the page and try again."
        return console.refuse(request, console.session(request), 413, "Form too large", said)

    app.add_exception_handler(FormTooLarge, too_large)
    return console.sessions


def router(console: Console) -> APIRouter:
    pages = APIRouter(prefix=PREFIX, include_in_schema=False)
    signin_limit = console_signin.SignInLimit()

    async def fleet_values(request: Request) -> dict[str, Any]:
        filters, page, problem = _filters(request)
        now = datetime.now(UTC)
        fleet = await run_in_threadpool(console_data.fleet, console.engine, filters, page)
        chart = await console.chart(now)
        groups: dict[str, list[console_data.Row]] = {}
        for row in fleet.rows:
            groups.setdefault(row.kind, []).append(row)
        return {
            "filters": filters,
            "fleet": fleet,
            "groups": groups,
            "problem": problem,
            "chart": chart,
            "bars": console_pictures.bars(chart),
            "pictures": console_pictures,
            "kinds": list(all_kinds()),
            "phases": PHASES,
            "query": urlencode(filters.query(page=fleet.page if fleet.page > 1 else None)),
            "link": lambda **more: f"{PREFIX}/?{urlencode(filters.query(**more))}",
        }

    @pages.get("", response_class=HTMLResponse)
    @pages.get("/", response_class=HTMLResponse)
    async def fleet_page(request: Request) -> Response:
        viewer = console.viewer(request)
        if isinstance(viewer, Response):
            return viewer
        return console.render("fleet.html", request, viewer, **await fleet_values(request))

    @pages.get("/fragment/fleet", response_class=HTMLResponse)
    async def fleet_fragment(request: Request) -> Response:
        viewer = console.viewer(request)
        if isinstance(viewer, Response):
            return viewer
        return console.render("_fleet_body.html", request, viewer, **await fleet_values(request))

    async def resource_values(kind_name: str, name: str) -> dict[str, Any] | None:
        kind = all_kinds().get(kind_name)
        if kind is None or "\x00" in name:
            return None
        try:
            found = await run_in_threadpool(console_data.resource, console.engine, kind, name)
        except NotFound:
            return None
        now = datetime.now(UTC)
        return {
            "kind": kind,
            "name": name,
            "r": found,
            "spec": found.document["spec"],
            "status": found.document["status"],
            "marks": console_pictures.timeline(found.runs, now),
            "pictures": console_pictures,
            "actions": ACTIONS,
        }

    def missing(request: Request, viewer: Session, kind_name: str, name: str) -> Response:
        if kind_name not in all_kinds():
            said = f"There is no kind {kind_name!r}; known kinds: {', '.join(all_kinds())}."
        elif "\x00" in name:
            return console.refuse(request, viewer, 422, "Not a name", _nul("resource name"))
        else:
            said = f"{kind_name}/{name} does not exist (or no longer does)."
        return console.refuse(request, viewer, 404, "Not found", said)

    @pages.get("/r/{kind_name}/{name}", response_class=HTMLResponse)
    async def resource_page(request: Request, kind_name: str, name: str) -> Response:
        viewer = console.viewer(request)
        if isinstance(viewer, Response):
            return viewer
        values = await resource_values(kind_name, name)
        if values is None:
            return missing(request, viewer, kind_name, name)
        done = request.query_params.get("done")
        return console.render("resource.html", request, viewer, done=done if done in ACTIONS else None, **values)

    @pages.get("/fragment/r/{kind_name}/{name}", response_class=HTMLResponse)
    async def resource_fragment(request: Request, kind_name: str, name: str) -> Response:
        viewer = console.viewer(request)
        if isinstance(viewer, Response):
            return viewer
        values = await resource_values(kind_name, name)
        if values is None:
            return missing(request, viewer, kind_name, name)
        return console.render("_resource_body.html", request, viewer, **values)

    @pages.get("/r/{kind_name}/{name}/{action}", response_class=HTMLResponse)
    async def confirm_page(request: Request, kind_name: str, name: str, action: str) -> Response:
        """The confirmation step, for browsers without JavaScript (with it, a dialog on the resource's page)."""
        viewer = console.viewer(request)
        if isinstance(viewer, Response):
            return viewer
        if action not in ACTIONS:
            return console.refuse(request, viewer, 404, "Not found", f"There is no action {action!r}.")
        if not console.writable:
            return read_only(request, viewer)
        values = await resource_values(kind_name, name)
        if values is None:
            return missing(request, viewer, kind_name, name)
        return console.render("confirm.html", request, viewer, action=action, **values)

    def read_only(request: Request, viewer: Session | None) -> Response:
        return console.refuse(
            request,
            viewer,
            403,
            "Read-only",
            "This console is read-only: the API was started without SETPOINT_API_TOKEN. Set a token (then sign in), "
            "or start it with `setpoint api --insecure-no-auth --console-actions` on a loopback address.",
        )

    @pages.post("/r/{kind_name}/{name}/{action}")
    async def act(request: Request, kind_name: str, name: str, action: str) -> Response:
        session = console.session(request)
        form = await _form(request)
        refused = check_write(request, session, form)
        if refused is not None:
            return refused
        assert session is not None
        kind = all_kinds().get(kind_name)
        if kind is None or "\x00" in name:
            return missing(request, session, kind_name, name)
        if action not in ACTIONS:
            return console.refuse(request, session, 404, "Not found", f"There is no action {action!r}.")
        actor = f"console:{session.identity}"

        def do() -> None:
            with change.acting(actor, f"{ACTIONS[action][0].lower()} from the web console"):
                if action == "reconcile":
                    documents.reconcile_now(console.engine, kind, name)
                else:
                    documents.set_paused(console.engine, kind, name, action == "pause")

        try:
            await run_in_threadpool(do)
        except NotFound:
            return missing(request, session, kind_name, name)
        log.info("console action", extra={"actor": actor, "action": action, "kind": kind.name, "resource": name})
        return RedirectResponse(f"{PREFIX}/r/{kind.name}/{name}?done={action}", status_code=303)

    def check_write(request: Request, session: Session | None, form: dict[str, str]) -> Response | None:
        """Refuse a write that is not this console's own: no session, no write right, a foreign origin, or a
        CSRF token that is not the session's."""
        if not console.writable:
            return read_only(request, session)
        if session is None:
            return console.refuse(request, None, 401, "Signed out", "Your session has ended: sign in again.")
        if not same_origin(request):
            return console.refuse(
                request,
                session,
                403,
                "Refused",
                "This request did not come from a page of this console (its Origin "
                "is another site's, or missing), so nothing was done.",
            )
        if not console.sessions.csrf_ok(session, form.get("csrf")):
            return console.refuse(
                request,
                session,
                403,
                "Refused",
                "This form is out of date or not this console's (its CSRF token "
                "does not match your session), so nothing was done. Reload the page and try again.",
            )
        return None

    @pages.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        if not console.token:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        return console.render("login.html", request, None, next=_safe_next(request.query_params.get("next")), error="")

    @pages.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        if not console.token:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        form = await _form(request)
        target = _safe_next(form.get("next"))
        if not same_origin(request):
            error = "This sign-in did not come from this console's own page, so it was refused."
            return console.render("login.html", request, None, http_status=403, next=target, error=error)
        address, now = request.client.host if request.client else "", time.monotonic()
        wait_s = signin_limit.retry_after_s(address, now)
        if wait_s is not None:
            error = f"Too many wrong tokens from your address: wait {wait_s} s, then try again."
            refused = console.render("login.html", request, None, http_status=429, next=target, error=error)
            refused.headers["Retry-After"] = str(wait_s)
            return refused
        if not hmac.compare_digest(form.get("token", "").strip().encode(), console.token.encode()):
            signin_limit.failed(address, now)
            log.warning("console sign-in refused", extra={"client": address})
            error = "That is not the API's token (SETPOINT_API_TOKEN): nothing was opened. Check it and try again."
            return console.render("login.html", request, None, http_status=401, next=target, error=error)
        session, cookie = console.sessions.issue(identity(form.get("name", "")))
        response = RedirectResponse(target, status_code=303)
        set_cookie(response, request, cookie)
        log.info("console sign-in", extra={"identity": session.identity})
        return response

    @pages.post("/logout")
    async def logout(request: Request) -> Response:
        session = console.session(request)
        form = await _form(request)
        if session is None or not same_origin(request) or not console.sessions.csrf_ok(session, form.get("csrf")):
            return console.refuse(request, session, 403, "Refused", "Nothing was done: reload the page and try again.")
        console.sessions.sign_out(session)
        response = RedirectResponse(f"{PREFIX}/login" if console.token else f"{PREFIX}/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @pages.get("/{rest:path}", response_class=HTMLResponse)
    async def unknown(request: Request, rest: str) -> Response:
        viewer = console.viewer(request)
        if isinstance(viewer, Response):
            return viewer
        return console.refuse(request, viewer, 404, "Not found", "There is no such page in the console.")

    return pages

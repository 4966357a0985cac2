"""The dashboard's web application: pages, live streams and the files it may serve.

A Starlette app (ASGI; uvicorn serves it, see :mod:`~lhs_federated.dashboard.serve`)
with Jinja2 templates and a few lines of JavaScript shipped in the package:
nothing is fetched from elsewhere. It is read-only: every route is a GET,
nothing writes to the folders it was given, and every path a request names
is resolved and refused unless it lies inside them.

Live progress is a server-sent event stream per page: the server watches the
sizes and modification times of a run's tables and events file and sends a
``progress`` event when they change; the page updates its counters and
re-fetches the one fragment that holds the tables and charts.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from html import escape
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from lhs_federated.dashboard import charts
from lhs_federated.dashboard.consortium import ConsortiumReader
from lhs_federated.dashboard.runs import (
    SITE_METRICS,
    NotServedError,
    RunsFolder,
    RunView,
    fingerprint,
)
from lhs_federated.errors import LhsError

HERE = Path(__file__).parent
TOKEN_COOKIE = "lhs_dashboard_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
#: How often a live stream looks at the files, and how long one stream lasts
#: before the browser reconnects (EventSource does so by itself).
POLL_SECONDS = 0.5
STREAM_SECONDS = 300.0
SETTLED_SECONDS = 5.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class TokenGate:
    """ASGI middleware: every request needs the token (query, cookie or bearer header).

    The first page opened with ``?token=...`` sets a same-site cookie, so
    links and the live streams work without repeating it.
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 unless the request carries the token."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        candidates = [
            given,
            request.cookies.get(TOKEN_COOKIE),
            header[7:] if header.lower().startswith("bearer ") else None,
        ]
        if not any(c and hmac.compare_digest(c, self.token) for c in candidates):
            reason = "wrong token" if any(candidates) else "a token is required"
            response = HTMLResponse(
                _error_html(
                    401,
                    f"{reason}: open the address `lhs-fed dashboard` printed (it ends in "
                    "?token=...), or send the header 'Authorization: Bearer <token>'.",
                ),
                status_code=401,
            )
            await response(scope, receive, send)
            return

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and given:
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _error_html(status: int, message: str) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lhs-fed dashboard: "
        f"{status}</title><link rel='stylesheet' href='/static/dashboard.css'></head><body>"
        f"<main><h1>{status}</h1><p class='error'>{escape(message)}</p>"
        "<p><a href='/'>back to the runs</a></p></main></body></html>"
    )


def create_app(
    runs: str | Path,
    *,
    server_config: str | Path | None = None,
    site_configs: list[Path] | None = None,
    token: str | None = None,
) -> Any:
    """Build the dashboard for a runs folder (and a coordinator's ``server.toml``).

    Parameters
    ----------
    runs : str or Path
        The folder of run folders it shows; nothing outside it is served.
    server_config : str or Path, optional
        A coordinator's ``server.toml``: adds its sites (registered, online).
    site_configs : list of Path, optional
        Sites' ``site.toml`` files: adds their approvals in force and budgets.
    token : str, optional
        Required on every request when given (the CLI gives one whenever the
        dashboard listens beyond loopback).

    Raises
    ------
    ConfigError
        If the runs folder does not exist or the server config is invalid.
    """
    folder = RunsFolder(runs)
    consortium = ConsortiumReader(
        folder, Path(server_config) if server_config else None, site_configs
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(fmt=_fmt, metrics=SITE_METRICS)

    def page(request: Request, name: str, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, {"runs_root": folder.root, **context})

    async def index(request: Request) -> Response:
        views = await run_in_threadpool(lambda: [folder.read(r) for r in folder.run_ids()])
        return page(request, "index.html", runs=views)

    async def consortium_page(request: Request) -> Response:
        return page(request, "consortium.html", consortium=await run_in_threadpool(consortium.read))

    async def run_page(request: Request) -> Response:
        view = await run_in_threadpool(folder.read, request.path_params["run_id"])
        return page(request, "run.html", run=view, **_live_context(view))

    async def run_live(request: Request) -> Response:
        view = await run_in_threadpool(folder.read, request.path_params["run_id"])
        return page(request, "_live.html", run=view, **_live_context(view))

    async def run_file(request: Request) -> Response:
        path = folder.file(request.path_params["run_id"], request.path_params["name"])
        return FileResponse(path)

    async def audit_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        view = folder.read(run_id)
        audit = await run_in_threadpool(_audit, view.path)
        return page(request, "audit.html", run=view, audit=audit)

    async def audit_report(request: Request) -> Response:
        from lhs_federated.governance.report import render_report

        view = folder.read(request.path_params["run_id"])
        audit = await run_in_threadpool(_audit, view.path)
        return HTMLResponse(render_report(audit))

    async def run_stream(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        run_dir = folder.run_dir(run_id)
        return _event_stream(request, lambda: fingerprint(run_dir), lambda: [folder.read(run_id)])

    async def all_stream(request: Request) -> Response:
        def state() -> tuple:
            ids = folder.run_ids()
            return tuple((r, fingerprint(folder.run_dir(r))) for r in ids)

        return _event_stream(
            request, state, lambda: [folder.read(r) for r in folder.run_ids()], forever=True
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return HTMLResponse(_error_html(404, getattr(exc, "message", "not found")), 404)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return HTMLResponse(_error_html(400, getattr(exc, "message", str(exc))), 400)

    async def http_error(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 500)
        return HTMLResponse(_error_html(code, str(getattr(exc, "detail", exc))), code)

    routes = [
        Route("/", index),
        Route("/consortium", consortium_page),
        Route("/stream", all_stream),
        Route("/runs/{run_id:path}/audit/report", audit_report),
        Route("/runs/{run_id:path}/audit", audit_page),
        Route("/runs/{run_id:path}/files/{name:path}", run_file),
        Route("/runs/{run_id:path}/live", run_live),
        Route("/runs/{run_id:path}/stream", run_stream),
        Route("/runs/{run_id:path}", run_page),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app: Any = Starlette(
        routes=routes,
        exception_handlers={
            NotServedError: not_found,
            LhsError: bad_request,
            HTTPException: http_error,
        },
    )
    if token:
        return TokenGate(app, token)
    # Without a token the dashboard is for this machine only: a page elsewhere that points
    # its own host name at 127.0.0.1 (DNS rebinding) is refused too.
    return TrustedHostMiddleware(app, allowed_hosts=list(LOOPBACK_NAMES))


def _audit(run_dir: Path) -> Any:
    from lhs_federated.governance.run_audit import audit_run

    return audit_run(run_dir)


def _event_stream(
    request: Request,
    state: Callable[[], Any],
    views: Callable[[], list[RunView]],
    *,
    forever: bool = False,
) -> StreamingResponse:
    """Server-sent events: ``progress`` (one per run) whenever ``state()`` changes.

    A single run's stream ends with a ``done`` event once the run completed or
    failed and its files stopped changing for :data:`SETTLED_SECONDS`; every
    stream closes after :data:`STREAM_SECONDS` (the browser reconnects) so
    that no connection outlives its use.
    """

    async def events() -> AsyncIterator[str]:
        last, changed, ping = None, time.monotonic(), time.monotonic()
        deadline = time.monotonic() + STREAM_SECONDS
        final = False
        while time.monotonic() < deadline and not await request.is_disconnected():
            current = await run_in_threadpool(state)
            if current != last:
                last, changed = current, time.monotonic()
                found = await run_in_threadpool(views)
                for view in found:
                    yield f"event: progress\ndata: {json.dumps(view.progress())}\n\n"
                final = not forever and all(v.status in ("completed", "failed") for v in found)
            elif final and time.monotonic() - changed > SETTLED_SECONDS:
                # summary.json comes first; baselines and the report are added after it
                yield "event: done\ndata: {}\n\n"
                return
            elif time.monotonic() - ping > 15:
                ping = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _live_context(view: RunView) -> dict[str, Any]:
    """Charts of the run page: mean and per-site AUROC, and per-site Brier score."""
    auroc: charts.Series = {
        "mean": [(r.round, r.mean_auroc) for r in view.rounds],
    }
    brier: charts.Series = {}
    for rnd in sorted(view.metrics):
        for site, values in view.metrics[rnd].items():
            auroc.setdefault(site, []).append((rnd, values.get("auroc", (None, ""))[0]))
            brier.setdefault(site, []).append((rnd, values.get("brier", (None, ""))[0]))
    return {
        "auroc_chart": charts.line_chart(
            auroc, title="AUROC on the test splits", y_label="AUROC", emphasise="mean"
        ),
        "brier_chart": charts.line_chart(
            brier, title="Brier score on the test splits", y_label="Brier"
        ),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell; ``—`` for a missing one."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)

"""The dashboard's routes: `/` (the page), its two static files, and `/dashboard.json` (what the
page polls). Every route is read-only and behind the same access rule (access.py)."""

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from orchestrator.dashboard.access import (
    COOKIE,
    RELAY_HEADERS,
    Presented,
    Verdict,
    cookie_value,
    verdict,
)
from orchestrator.dashboard.shared import DashboardUnavailable, SharedSnapshot
from orchestrator.dashboard.snapshot import read_snapshot
from orchestrator.db import Database

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("style.css", "text/css; charset=utf-8"),
}
# User prompts are hostile input: the page sets text only through textContent, and the policy
# below refuses any script or style the page did not ship, should one ever slip through. Images
# may come from another origin (Supabase Storage, or PUBLIC_BASE_URL's host).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' http: https: data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def static_file(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return resources.files("orchestrator.dashboard").joinpath("static", name).read_bytes()


def presented(request: Request) -> Presented:
    """What the request brings that could let it in."""
    return Presented(
        client_host=request.client.host if request.client else None,
        host_header=request.headers.get("host"),
        relayed=any(name in request.headers for name in RELAY_HEADERS),
        authorization=request.headers.get("authorization"),
        query_token=request.query_params.get("token"),
        cookie=request.cookies.get(COOKIE),
    )


def refusal(found: Verdict) -> JSONResponse:
    """The house error body, with the bearer challenge on a 401."""
    response = JSONResponse({"error": found.message}, status_code=found.status)
    if found.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def swap_token_for_cookie(request: Request, token: str) -> Response:
    """`?token=` once: the same page again without it in the address, and the cookie set."""
    response = RedirectResponse(request.url.path, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie_value(token),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def add_dashboard(
    app: FastAPI, db: Database, template_id: str, token: str | None, *, jobs: int
) -> None:
    """Serve the dashboard on `app`; `token` is DASHBOARD_TOKEN (None: loopback clients only).
    Its reads take no connection of `db`'s pool but one of their own, to the same database, which
    close_dashboard(app) closes."""
    shared = SharedSnapshot(db.url, lambda conn: read_snapshot(conn, template_id, jobs))
    app.state.dashboard = shared

    def guard(request: Request) -> Response | None:
        found = verdict(presented(request), token)
        if not found.allowed:
            return refusal(found)
        if found.set_cookie and token is not None:
            return swap_token_for_cookie(request, token)
        return None

    def serve_static(path: str) -> None:
        name, media_type = STATIC[path]
        body = static_file(name)

        async def page(request: Request) -> Response:
            return guard(request) or Response(body, media_type=media_type, headers=SECURITY_HEADERS)

        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)

    for path in STATIC:
        serve_static(path)

    @app.get("/dashboard.json", include_in_schema=False)
    async def dashboard_json(request: Request) -> Response:
        if (refused := guard(request)) is not None:
            return refused
        try:
            snapshot = await shared.get()
        except DashboardUnavailable:  # logged once per read, not once per viewer (shared.py)
            return JSONResponse({"error": "database unavailable; retry later"}, status_code=503)
        return JSONResponse(snapshot, headers=SECURITY_HEADERS)


async def close_dashboard(app: FastAPI) -> None:
    """Close the dashboard's own connection (add_dashboard's), when the service stops."""
    shared = getattr(app.state, "dashboard", None)
    if isinstance(shared, SharedSnapshot):
        await shared.close()

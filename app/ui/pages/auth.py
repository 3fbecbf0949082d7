"""Login, logout, the home redirect and the UI's static files."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from app.auth import service as auth_service
from app.auth.router import set_session_cookie
from app.deps import SESSION_COOKIE, SessionDep, SettingsDep, client_address, user_from_cookie
from app.errors import DomainError, NotFound
from app.ui.web import (
    HERE,
    LOGIN_COOKIE,
    CheckedForm,
    HtmlRoute,
    login_csrf,
    login_form,
    login_refused,
    render,
    safe_next,
    set_login_cookie,
)

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)
STATIC = (HERE / "static").resolve()
FAVICON = STATIC / "favicon.svg"


@router.get("/")
def home(request: Request, db: SessionDep, settings: SettingsDep) -> RedirectResponse:
    user = user_from_cookie(db, settings, request.cookies.get(SESSION_COOKIE))
    return RedirectResponse("/ui" if user else "/login", status_code=303)


@router.get("/ui/static/{path:path}")
def static(path: str) -> FileResponse:
    """The UI's own CSS and JS (no third-party assets, no build step)."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise NotFound("no such file")
    return FileResponse(target, headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """Browsers ask for /favicon.ico on their own (and pages without our <link rel=icon>, like /docs): the
    same SVG, whose content type the browser goes by."""
    return FileResponse(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


@router.get("/login")
def login_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    value, token = login_csrf(request)
    response = render(
        request, "login.html", None, next=safe_next(next), error=None, login_token=token, username=""
    )
    set_login_cookie(response, value, settings)
    return response


@router.post("/login")
async def login_submit(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    """Password checks are throttled (app.auth.throttle); a refused attempt shows the form again."""
    username, password, next_url = await login_form(request, settings)
    try:
        user = auth_service.authenticate(
            db=db, username=username, password=password, client=client_address(request), via="ui"
        )
    except DomainError as exc:
        return login_refused(request, exc, next_url, username)
    response = RedirectResponse(next_url, status_code=303)
    set_session_cookie(response, settings, db, user)
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, form: CheckedForm, db: SessionDep) -> RedirectResponse:
    """Ends the session on the server: the cookie is worthless from now on, wherever it was copied."""
    auth_service.logout(db=db, cookie=request.cookies.get(SESSION_COOKIE), client=client_address(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response

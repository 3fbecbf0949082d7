"""Plumbing shared by the pages: templates (autoescaped), the logged-in user, CSRF on forms, HTML errors."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.datastructures import FormData

from app.auth.models import Role, User
from app.auth.security import check_csrf, csrf_token_for
from app.config import Settings, get_settings
from app.deps import SESSION_COOKIE, SessionDep, SettingsDep, user_from_cookie
from app.errors import DomainError, Forbidden

HERE = Path(__file__).resolve().parent
LOGIN_COOKIE = "if_login"
FLASH_COOKIE = "if_flash"
# Defence in depth behind escaping: no inline script or style can run, even if some text slipped through.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

# Autoescape every template, whatever its extension: record text comes from LLMs and uploads.
env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined, trim_blocks=True
)
templates = Jinja2Templates(env=env)


class LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def error_page(request: Request, exc: DomainError) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status_code, "message": exc.message, "user": None, "csrf": "", "flash": None},
        status_code=exc.status_code,
        headers=SECURITY_HEADERS,
    )


class HtmlRoute(APIRoute):
    """Pages answer errors as pages: 401 becomes a redirect to the login page, 403/404 an error page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await original(request)
            except LoginRequired as exc:
                return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)
            except DomainError as exc:
                return error_page(request, exc)
            if isinstance(response, HTMLResponse) or response.media_type == "text/html":
                for key, value in SECURITY_HEADERS.items():
                    response.headers.setdefault(key, value)
            return response

        return handler


def page_user(request: Request, db: SessionDep, settings: SettingsDep) -> User:
    """The user of a page request (session cookie only: pages are for browsers)."""
    user = user_from_cookie(db, settings, request.cookies.get(SESSION_COOKIE))
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return user


PageUser = Annotated[User, Depends(page_user)]


def csrf_for(request: Request, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return csrf_token_for(settings.secret_key, request.cookies.get(SESSION_COOKIE, ""))


async def checked_form(request: Request, settings: SettingsDep) -> FormData:
    """The posted form, refused unless it carries the session's CSRF token (hidden field `csrf_token`)."""
    form = await request.form()
    token = form.get("csrf_token")
    if not isinstance(token, str) or not check_csrf(
        settings.secret_key, request.cookies.get(SESSION_COOKIE, ""), token
    ):
        raise Forbidden("missing or invalid CSRF token: reload the page and submit again")
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]


def login_csrf(request: Request) -> tuple[str, str]:
    """Login forms are protected too (login CSRF): a random pre-session cookie, signed into the form.
    Returns (cookie value, form token)."""
    value = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
    return value, csrf_token_for(get_settings().secret_key, "login:" + value)


def set_login_cookie(response: Response, value: str, settings: Settings) -> None:
    response.set_cookie(
        LOGIN_COOKIE, value, max_age=3600, httponly=True, samesite="strict", secure=settings.cookie_secure
    )


def check_login_csrf(request: Request, token: str | None, settings: Settings) -> bool:
    value = request.cookies.get(LOGIN_COOKIE)
    return bool(value) and check_csrf(settings.secret_key, "login:" + (value or ""), token)


async def login_form(request: Request, settings: Settings) -> tuple[str, str, str]:
    """(username, password, where to go next) of a posted login form, refused without its CSRF token."""
    form = await request.form()
    token = form.get("csrf_token")
    if not check_login_csrf(request, token if isinstance(token, str) else None, settings):
        raise Forbidden("the login form expired: reload the page and log in again")
    return (
        str(form.get("username", "")),
        str(form.get("password", "")),
        safe_next(str(form.get("next") or "")),
    )


def login_refused(request: Request, exc: DomainError, next_url: str, username: str = "") -> Response:
    """The login form again, saying why: 401, or 429 with Retry-After while guesses are throttled. The
    username stays filled in (a typo in the password should not cost retyping it); the password never."""
    token = login_csrf(request)[1]
    return refused_page(request, "login.html", None, exc, next=next_url, login_token=token, username=username)


def safe_next(target: str | None) -> str:
    """Only same-site paths: `next` must never send a user who just logged in to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


def refused_page(
    request: Request, name: str, user: User | None, exc: DomainError, **context: Any
) -> Response:
    """A form's page again, saying why it was refused; a 429 says when to try again (Retry-After)."""
    response = render(request, name, user, status_code=exc.status_code, error=exc.message, **context)
    retry_after = exc.detail.get("retry_after")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def redirect(url: str, flash: str | None = None) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if flash:
        response.set_cookie(
            FLASH_COOKIE,
            quote(flash[:300]),
            max_age=30,
            httponly=True,
            samesite="lax",
            secure=get_settings().cookie_secure,
        )
    return response


def render(
    request: Request,
    name: str,
    user: User | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """Render a page with the common context (user, CSRF token, the one-shot flash message)."""
    flash = request.cookies.get(FLASH_COOKIE)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "csrf": csrf_for(request),
            "flash": unquote(flash) if flash else None,
            "is_curator": user is not None and user.role in (Role.admin.value, Role.curator.value),
            "is_admin": user is not None and user.role == Role.admin.value,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE)
    return response

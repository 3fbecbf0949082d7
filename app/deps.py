"""FastAPI dependencies: database session, current user (API token or session cookie), CSRF."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth import sessions
from app.auth.models import User
from app.auth.security import check_csrf
from app.config import Settings, get_settings
from app.db import session_scope
from app.errors import Forbidden, Unauthorized

SESSION_COOKIE = "if_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_db() -> Iterator[Session]:
    """The request's unit of work (app.db.session_scope)."""
    with session_scope() as session:
        yield session


# scope="function": the unit of work ends (commit, or rollback on error) when the handler returns, before
# the response is sent. With the default scope FastAPI would send the response first and commit after, so
# a failed commit (a unique name taken, text the database refuses) still answered 200, and a client's next
# request could miss a write it was told had happened. A failed commit raises into the error handlers
# (app.main), which answer 409/422 instead.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def user_from_cookie(db: Session, settings: Settings, cookie: str | None) -> User | None:
    """The user of a live session (app.auth.sessions): ended by logout, a password change, deactivation."""
    return sessions.session_user(db=db, settings=settings, cookie=cookie)


def client_address(request: Request) -> str:
    """The client's address, as the ASGI server reports it. Behind a proxy that is the proxy unless the
    server trusts its X-Forwarded-For (uvicorn: FORWARDED_ALLOW_IPS, see docs/deployment.md)."""
    return request.client.host if request.client else "unknown"


def get_current_user(request: Request, db: SessionDep, settings: SettingsDep) -> User:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        user = auth_service.user_for_token(db=db, plain=auth[7:].strip())
        if user is None:
            raise Unauthorized("invalid or revoked API token")
        return user
    cookie = request.cookies.get(SESSION_COOKIE)
    user = user_from_cookie(db, settings, cookie)
    if user is None:
        raise Unauthorized("not authenticated: log in or send 'Authorization: Bearer <token>'")
    # Cookie-authenticated writes must carry the CSRF token: a cookie alone is sent by any site.
    if request.method not in SAFE_METHODS and not check_csrf(
        settings.secret_key, cookie or "", request.headers.get(CSRF_HEADER)
    ):
        raise Forbidden("missing or invalid CSRF token")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from app.auth import service, sessions
from app.auth.models import ApiToken, User
from app.auth.schemas import (
    LoginRequest,
    LoginResponse,
    PasswordChange,
    TokenCreate,
    TokenCreated,
    TokenRead,
    UserBrief,
    UserCreate,
    UserRead,
    UserUpdate,
)
from app.auth.security import csrf_token_for
from app.auth.throttle import TooManyAttempts
from app.config import Settings
from app.deps import SESSION_COOKIE, CurrentUser, SessionDep, SettingsDep, client_address, user_from_cookie


class ThrottledRoute(APIRoute):
    """A throttled password check answers 429 with Retry-After (app.auth.throttle), here rather than in the
    one DomainError handler, which sends no headers. The request's unit of work is rolled back first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except TooManyAttempts as exc:
                return JSONResponse(
                    {"detail": exc.message, "retry_after": exc.retry_after},
                    status_code=exc.status_code,
                    headers={"Retry-After": str(exc.retry_after)},
                )

        return handler


router = APIRouter(tags=["auth"], route_class=ThrottledRoute)
THROTTLED: dict[int | str, dict[str, Any]] = {
    429: {"description": "Too many failed password checks: wait Retry-After seconds."}
}


def set_session_cookie(response: Response, settings: Settings, db: Session, user: User) -> str:
    """Start a session for the user (a row in the request's unit of work) and set its HttpOnly cookie.
    Returns the session's CSRF token."""
    cookie = sessions.start_session(db=db, settings=settings, user=user)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=settings.session_max_age,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return csrf_token_for(settings.secret_key, cookie)


@router.post("/auth/login", response_model=LoginResponse, responses=THROTTLED)
def login(
    body: LoginRequest, request: Request, response: Response, db: SessionDep, settings: SettingsDep
) -> LoginResponse:
    """Log in with username and password; sets an HttpOnly session cookie. Failures are throttled."""
    user = service.authenticate(
        db=db, username=body.username, password=body.password, client=client_address(request), via="api"
    )
    csrf = set_session_cookie(response, settings, db, user)
    return LoginResponse(user=UserRead.model_validate(user), csrf_token=csrf)


@router.post("/auth/logout", status_code=204)
def logout(request: Request, response: Response, db: SessionDep) -> None:
    """End this session on the server (the cookie stops working everywhere it was copied) and drop it."""
    service.logout(db=db, cookie=request.cookies.get(SESSION_COOKIE), client=client_address(request))
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.post("/auth/password", status_code=204, responses=THROTTLED)
def change_password(
    body: PasswordChange,
    request: Request,
    response: Response,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
) -> None:
    """Change your own password (the current one required). Every session and API token of yours ends;
    a request made with the session cookie gets a new session cookie (GET /auth/me for its CSRF token)."""
    service.change_own_password(
        db=db,
        user=user,
        current_password=body.current_password,
        new_password=body.new_password,
        client=client_address(request),
    )
    if request.cookies.get(SESSION_COOKIE):
        set_session_cookie(response, settings, db, user)


@router.get("/auth/me", response_model=LoginResponse)
def me(request: Request, user: CurrentUser, settings: SettingsDep) -> LoginResponse:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return LoginResponse(
        user=UserRead.model_validate(user), csrf_token=csrf_token_for(settings.secret_key, cookie)
    )


@router.post("/auth/tokens", response_model=TokenCreated, status_code=201, responses=THROTTLED)
def create_token(body: TokenCreate, request: Request, db: SessionDep, settings: SettingsDep) -> TokenCreated:
    """Create an API token, either for the logged-in user or from username + password (throttled as a login)."""
    token, plain = service.create_token(
        db=db,
        name=body.name,
        username=body.username,
        password=body.password,
        session_user=user_from_cookie(db, settings, request.cookies.get(SESSION_COOKIE)),
        client=client_address(request),
    )
    return TokenCreated(**TokenRead.model_validate(token).model_dump(), token=plain)


@router.get("/auth/tokens", response_model=list[TokenRead])
def list_tokens(user: CurrentUser, db: SessionDep) -> Sequence[ApiToken]:
    return service.list_tokens(db=db, user=user)


@router.delete("/auth/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, user: CurrentUser, db: SessionDep) -> None:
    service.revoke_token(db=db, user=user, token_id=token_id)


@router.get("/users", response_model=list[UserRead])
def list_users(user: CurrentUser, db: SessionDep) -> Sequence[User]:
    """Every account with its role and state: admins only (curators use /users/directory)."""
    return service.list_users(db=db, user=user)


@router.get("/users/directory", response_model=list[UserBrief])
def user_directory(user: CurrentUser, db: SessionDep) -> Sequence[User]:
    """Active accounts by id and name, for curators adding project members (PUT /projects/{id}/members)."""
    return service.user_directory(db=db, user=user)


@router.post("/users", response_model=UserRead, status_code=201)
def create_user(body: UserCreate, user: CurrentUser, db: SessionDep) -> User:
    return service.add_user(db=db, actor=user, username=body.username, password=body.password, role=body.role)


@router.patch("/users/{user_id}", response_model=UserRead)
def update_user(user_id: int, body: UserUpdate, user: CurrentUser, db: SessionDep) -> User:
    """Change a user's role, state or password (admins). A new password or a deactivation ends every
    session and API token of the account; reactivating it brings none back."""
    return service.update_user(
        db=db, actor=user, user_id=user_id, role=body.role, is_active=body.is_active, password=body.password
    )

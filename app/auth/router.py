from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from app.audit import service as audit
from app.auth import service
from app.auth.models import ApiToken, Role, User
from app.auth.schemas import (
    LoginRequest,
    LoginResponse,
    TokenCreate,
    TokenCreated,
    TokenRead,
    UserBrief,
    UserCreate,
    UserRead,
    UserUpdate,
)
from app.auth.security import csrf_token_for, hash_password, sign_session
from app.deps import SESSION_COOKIE, CurrentUser, SessionDep, SettingsDep, user_from_cookie
from app.errors import Forbidden, Invalid, NotFound, Unauthorized

router = APIRouter(tags=["auth"])


def set_session_cookie(response: Response, settings: SettingsDep, user: User) -> str:
    cookie = sign_session(settings.secret_key, user.id, user.session_epoch)
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


@router.post("/auth/login", response_model=LoginResponse)
def login(body: LoginRequest, response: Response, db: SessionDep, settings: SettingsDep) -> LoginResponse:
    """Log in with username and password; sets an HttpOnly session cookie."""
    user = service.authenticate(db=db, username=body.username, password=body.password)
    csrf = set_session_cookie(response, settings, user)
    return LoginResponse(user=UserRead.model_validate(user), csrf_token=csrf)


@router.post("/auth/logout", status_code=204)
def logout(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/auth/me", response_model=LoginResponse)
def me(request: Request, user: CurrentUser, settings: SettingsDep) -> LoginResponse:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return LoginResponse(
        user=UserRead.model_validate(user), csrf_token=csrf_token_for(settings.secret_key, cookie)
    )


@router.post("/auth/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, request: Request, db: SessionDep, settings: SettingsDep) -> TokenCreated:
    """Create an API token, either for the logged-in user or from username + password."""
    if body.username is not None:
        user = service.authenticate(db=db, username=body.username, password=body.password or "")
    else:
        user_or_none = user_from_cookie(db, settings, request.cookies.get(SESSION_COOKIE))
        if user_or_none is None:
            raise Unauthorized("log in first, or send username and password")
        user = user_or_none
    token, plain = service.issue_token(db=db, user=user, name=body.name)
    return TokenCreated(**TokenRead.model_validate(token).model_dump(), token=plain)


@router.get("/auth/tokens", response_model=list[TokenRead])
def list_tokens(user: CurrentUser, db: SessionDep) -> Sequence[ApiToken]:
    return db.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)).all()


@router.delete("/auth/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, user: CurrentUser, db: SessionDep) -> None:
    service.revoke_token(db=db, user=user, token_id=token_id)


def _require_admin(user: User) -> None:
    if user.role != Role.admin.value:
        raise Forbidden("only admins manage users")


@router.get("/users", response_model=list[UserRead])
def list_users(user: CurrentUser, db: SessionDep) -> Sequence[User]:
    """Every account with its role and state: admins only (curators use /users/directory)."""
    _require_admin(user)
    return db.scalars(select(User).order_by(User.id)).all()


@router.get("/users/directory", response_model=list[UserBrief])
def user_directory(user: CurrentUser, db: SessionDep) -> Sequence[User]:
    """Active accounts by id and name, for curators adding project members (PUT /projects/{id}/members)."""
    if user.role == Role.annotator.value:
        raise Forbidden("annotators cannot list users")
    return db.scalars(select(User).where(User.is_active.is_(True)).order_by(User.username)).all()


@router.post("/users", response_model=UserRead, status_code=201)
def create_user(body: UserCreate, user: CurrentUser, db: SessionDep) -> User:
    _require_admin(user)
    return service.create_user(
        db=db, username=body.username, password=body.password, role=body.role, actor_id=user.id
    )


@router.patch("/users/{user_id}", response_model=UserRead)
def update_user(user_id: int, body: UserUpdate, user: CurrentUser, db: SessionDep) -> User:
    _require_admin(user)
    target = db.get(User, user_id)
    if target is None:
        raise NotFound(f"user {user_id} not found")
    if body.role is not None:
        if body.role not in Role.__members__:
            raise Invalid(f"role must be one of {', '.join(Role.__members__)}", field="role")
        target.role = body.role
    if body.is_active is not None:
        target.is_active = body.is_active
        target.session_epoch += 1
    if body.password is not None:
        target.password_hash = hash_password(body.password)
        target.session_epoch += 1
    audit.record(
        db=db,
        user_id=user.id,
        action="user.update",
        entity_type="user",
        entity_id=user_id,
        detail=body.model_dump(exclude_none=True, exclude={"password"}),
    )
    return target

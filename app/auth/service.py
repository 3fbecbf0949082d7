from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import ApiToken, Role, User
from app.auth.security import hash_password, hash_token, new_api_token, verify_password
from app.base import utcnow
from app.errors import Conflict, Invalid, NotFound, Unauthorized


def create_user(*, db: Session, username: str, password: str, role: str, actor_id: int | None = None) -> User:
    """Create a user; usernames are unique (case-insensitive)."""
    if role not in Role.__members__:
        raise Invalid(f"role must be one of {', '.join(Role.__members__)}", field="role")
    if len(password) < 8:
        raise Invalid("password must be at least 8 characters", field="password")
    if db.scalar(select(User.id).where(func.lower(User.username) == username.lower())) is not None:
        raise Conflict(f"username {username!r} is taken", field="username")
    user = User(username=username, password_hash=hash_password(password), role=role)
    db.add(user)
    db.flush()
    audit.record(
        db=db,
        user_id=actor_id,
        action="user.create",
        entity_type="user",
        entity_id=user.id,
        detail={"username": username, "role": role},
    )
    return user


def authenticate(*, db: Session, username: str, password: str) -> User:
    user = db.scalar(select(User).where(func.lower(User.username) == username.lower()))
    # Verify even for unknown users so response time does not reveal which usernames exist.
    ok = verify_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        raise Unauthorized("invalid username or password")
    return user


def issue_token(*, db: Session, user: User, name: str) -> tuple[ApiToken, str]:
    plain, prefix, digest = new_api_token()
    token = ApiToken(user_id=user.id, name=name, prefix=prefix, token_hash=digest)
    db.add(token)
    db.flush()
    audit.record(db=db, user_id=user.id, action="token.create", entity_type="api_token", entity_id=token.id)
    return token, plain


def user_for_token(*, db: Session, plain: str) -> User | None:
    # One query for the token and its user: this runs on every API request.
    row = db.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == hash_token(plain), ApiToken.revoked.is_(False))
    ).first()
    if row is None:
        return None
    token, user = row.tuple()
    now = utcnow()
    # At most one write a minute per token: every request updating one row would serialise them all.
    # The row stays locked until this request commits. Requests that read the old time meanwhile must
    # not queue behind it one by one (a convoy of every concurrent request on one token): on PostgreSQL
    # they skip the update when another request holds the row.
    if (token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60) and (
        db.get_bind().dialect.name != "postgresql"
        or db.scalar(select(ApiToken.id).where(ApiToken.id == token.id).with_for_update(skip_locked=True))
    ):
        token.last_used_at = now
    return user if user.is_active else None


def revoke_token(*, db: Session, user: User, token_id: int) -> None:
    token = db.get(ApiToken, token_id)
    if token is None or token.user_id != user.id:
        raise NotFound("token not found")
    token.revoked = True


def ensure_admin(*, db: Session, username: str, password: str) -> str | None:
    """Create the first admin if there is no user at all. Returns the generated password, if one was made."""
    if db.scalar(select(func.count(User.id))):
        return None
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(12)
    create_user(db=db, username=username, password=password, role=Role.admin.value)
    return generated

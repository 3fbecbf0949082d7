from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth import sessions, throttle
from app.auth.models import ApiToken, LoginThrottle, Role, User
from app.auth.security import hash_password, hash_token, new_api_token, verify_password
from app.base import utcnow
from app.config import get_settings
from app.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized

log = logging.getLogger(__name__)
MIN_PASSWORD = 8


def create_user(*, db: Session, username: str, password: str, role: str, actor_id: int | None = None) -> User:
    """Create a user; usernames are unique (case-insensitive)."""
    if role not in Role.__members__:
        raise Invalid(f"role must be one of {', '.join(Role.__members__)}", field="role")
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must be at least {MIN_PASSWORD} characters", field="password")
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


def _check_password(
    *, db: Session, username: str, password: str, client: str
) -> tuple[User | None, str | None, list[LoginThrottle]]:
    """One throttled password check: (the user, why it failed or None, the throttle rows it holds)."""
    rows = throttle.guard(db=db, keys=throttle.keys_for(username, client))
    user = db.scalar(select(User).where(func.lower(User.username) == username.lower()))
    # Verify even for unknown users so response time does not reveal which usernames exist.
    ok = verify_password(user.password_hash if user else None, password)
    if user is None:
        return None, "unknown user", rows
    if not ok:
        return user, "wrong password", rows
    if not user.is_active:
        return user, "inactive account", rows
    return user, None, rows


def _failure(
    *,
    db: Session,
    user: User | None,
    username: str,
    reason: str,
    client: str,
    via: str,
    rows: list[LoginThrottle],
    action: str = "auth.login_failed",
) -> None:
    """Count and record a failed password check, committed now: the request that made it fails after."""
    blocked = throttle.failed(db=db, rows=rows, settings=get_settings())
    audit.record(
        db=db,
        user_id=user.id if user else None,
        action=action,
        entity_type="user",
        entity_id=user.id if user else "",
        detail={
            "username": username[:100],
            "reason": reason,
            "via": via,
            "client": client,
            **({"blocked_for_s": blocked} if blocked else {}),
        },
    )
    db.commit()
    log.warning("%s for %r from %s via %s: %s", action, username[:100], client, via, reason)


def authenticate(*, db: Session, username: str, password: str, client: str = "", via: str = "api") -> User:
    """The user with these credentials, or 401 (the same answer for every reason). Throttled per account
    and client address (app.auth.throttle: 429 while blocked); successes and failures are audited."""
    user, reason, rows = _check_password(db=db, username=username, password=password, client=client)
    if reason is not None or user is None:
        _failure(db=db, user=user, username=username, reason=reason or "", client=client, via=via, rows=rows)
        raise Unauthorized("invalid username or password")
    throttle.succeeded(db=db, rows=rows)
    audit.record(
        db=db,
        user_id=user.id,
        action="auth.login",
        entity_type="user",
        entity_id=user.id,
        detail={"via": via, "client": client},
    )
    return user


def logout(*, db: Session, cookie: str | None, client: str) -> None:
    """End the session the cookie names, on the server: the cookie is worthless from now on."""
    user_id = sessions.end_session(db=db, settings=get_settings(), cookie=cookie)
    if user_id is not None:
        audit.record(
            db=db,
            user_id=user_id,
            action="auth.logout",
            entity_type="user",
            entity_id=user_id,
            detail={"client": client},
        )


def issue_token(*, db: Session, user: User, name: str) -> tuple[ApiToken, str]:
    plain, prefix, digest = new_api_token()
    token = ApiToken(user_id=user.id, name=name, prefix=prefix, token_hash=digest)
    db.add(token)
    db.flush()
    audit.record(
        db=db,
        user_id=user.id,
        action="token.create",
        entity_type="api_token",
        entity_id=token.id,
        detail={"name": name, "prefix": prefix, "owner": user.id},
    )
    return token, plain


def create_token(
    *,
    db: Session,
    name: str,
    username: str | None,
    password: str | None,
    session_user: User | None,
    client: str,
) -> tuple[ApiToken, str]:
    """A token for the account of `username` and `password` (a throttled password check, as a login), or
    else for the user of the session that asks."""
    if username is not None:
        user = authenticate(db=db, username=username, password=password or "", client=client, via="token")
    elif session_user is None:
        raise Unauthorized("log in first, or send username and password")
    else:
        user = session_user
    return issue_token(db=db, user=user, name=name)


def list_tokens(*, db: Session, user: User) -> Sequence[ApiToken]:
    return db.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)).all()


def require_admin(user: User) -> None:
    """Accounts are managed by admins only: the one check, for the API and the pages alike."""
    if user.role != Role.admin.value:
        raise Forbidden("only admins manage users")


def add_user(*, db: Session, actor: User, username: str, password: str, role: str) -> User:
    """An admin creates an account."""
    require_admin(actor)
    return create_user(db=db, username=username, password=password, role=role, actor_id=actor.id)


def list_users(*, db: Session, user: User) -> Sequence[User]:
    """Every account with its role and state: admins only."""
    require_admin(user)
    return db.scalars(select(User).order_by(User.id)).all()


def user_directory(*, db: Session, user: User) -> Sequence[User]:
    """Active accounts, for curators adding project members: names only (the router shows id and name)."""
    if user.role == Role.annotator.value:
        raise Forbidden("annotators cannot list users")
    return db.scalars(select(User).where(User.is_active.is_(True)).order_by(User.username)).all()


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
    if not token.revoked:
        token.revoked = True
        audit.record(
            db=db,
            user_id=user.id,
            action="token.revoke",
            entity_type="api_token",
            entity_id=token.id,
            detail={"name": token.name, "prefix": token.prefix, "owner": user.id},
        )


def _end_credentials(*, db: Session, user: User, actor_id: int, why: str) -> dict[str, int]:
    """Everything the account signed in with stops working: every session and every API token. Tokens are
    revoked for good, so reactivating an account brings none back."""
    ended = sessions.end_all_sessions(db=db, user=user)
    revoked = db.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))
        .values(revoked=True)
        .returning(ApiToken.id)
    ).all()
    if revoked:
        audit.record(
            db=db,
            user_id=actor_id,
            action="token.revoke",
            entity_type="user",
            entity_id=user.id,
            detail={"owner": user.id, "tokens": [t.id for t in revoked], "reason": why},
        )
    return {"sessions_ended": ended, "tokens_revoked": len(revoked)}


def change_own_password(
    *,
    db: Session,
    user: User,
    current_password: str,
    new_password: str,
    client: str,
    confirm_password: str | None = None,
) -> dict[str, int]:
    """A user sets a new password, proving the current one (throttled like a login); a form sends the new
    one twice (`confirm_password`). Every session and API token of the account ends, this one's included:
    the caller starts a new session for this browser."""
    if confirm_password is not None and confirm_password != new_password:
        raise Invalid("the two new passwords differ", field="confirm_password")
    if len(new_password) < MIN_PASSWORD:
        raise Invalid(f"password must be at least {MIN_PASSWORD} characters", field="new_password")
    if new_password == current_password:
        raise Invalid("the new password is the current one", field="new_password")
    _, reason, rows = _check_password(db=db, username=user.username, password=current_password, client=client)
    if reason is not None:
        _failure(
            db=db,
            user=user,
            username=user.username,
            reason=reason,
            client=client,
            via="password_change",
            rows=rows,
            action="user.password_change_failed",
        )
        raise Invalid("the current password is wrong", field="current_password")
    throttle.succeeded(db=db, rows=rows)
    user.password_hash = hash_password(new_password)
    ended = _end_credentials(db=db, user=user, actor_id=user.id, why="password changed")
    audit.record(
        db=db,
        user_id=user.id,
        action="user.password_change",
        entity_type="user",
        entity_id=user.id,
        detail={"by": "self", "client": client, **ended},
    )
    return ended


def update_user(
    *,
    db: Session,
    actor: User,
    user_id: int,
    role: str | None = None,
    is_active: bool | None = None,
    password: str | None = None,
) -> User:
    """An admin changes a user's role, state or password. A new password or a deactivation ends every
    session and API token of the account."""
    require_admin(actor)
    target = db.get(User, user_id)
    if target is None:
        raise NotFound(f"user {user_id} not found")
    before = {"role": target.role, "is_active": target.is_active}
    if role is not None:
        if role not in Role.__members__:
            raise Invalid(f"role must be one of {', '.join(Role.__members__)}", field="role")
        target.role = role
    if is_active is not None:
        target.is_active = is_active
    ended: dict[str, int] = {}
    if password is not None:
        if len(password) < MIN_PASSWORD:
            raise Invalid(f"password must be at least {MIN_PASSWORD} characters", field="password")
        target.password_hash = hash_password(password)
        ended = _end_credentials(db=db, user=target, actor_id=actor.id, why="password set by an admin")
    elif before["is_active"] and not target.is_active:
        ended = _end_credentials(db=db, user=target, actor_id=actor.id, why="account deactivated")
    audit.record(
        db=db,
        user_id=actor.id,
        action="user.update",
        entity_type="user",
        entity_id=target.id,
        before={**before, "password": None},
        after={
            "role": target.role,
            "is_active": target.is_active,
            "password": "changed" if password is not None else None,
        },
        detail=ended,
    )
    return target


def ensure_admin(*, db: Session, username: str, password: str) -> str | None:
    """Create the first admin if there is no user at all. Returns the generated password, if one was made."""
    if db.scalar(select(func.count(User.id))):
        return None
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(12)
    create_user(db=db, username=username, password=password, role=Role.admin.value)
    return generated

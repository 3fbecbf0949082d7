"""Web sessions that end on the server.

The cookie is signed (app.auth.security.sign_session) and names a row of `user_sessions`; a cookie is
good while its row exists, has not expired, and the user's `session_epoch` is the one it was signed with.
So logout deletes one row (that browser only), and a password change or a deactivation ends every session
of the account at once (epoch bumped, rows deleted): a copied cookie stops working then, not 7 days later.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth.models import User, UserSession
from app.auth.security import hash_token, read_session, sign_session
from app.base import utcnow
from app.config import Settings


def start_session(*, db: Session, settings: Settings, user: User) -> str:
    """A new session for the user; returns the cookie value. The user's expired rows are dropped here."""
    now = utcnow()
    db.execute(delete(UserSession).where(UserSession.user_id == user.id, UserSession.expires_at <= now))
    session_id = secrets.token_urlsafe(32)
    db.add(
        UserSession(
            user_id=user.id,
            token_hash=hash_token(session_id),
            expires_at=now + timedelta(seconds=settings.session_max_age),
        )
    )
    db.flush()
    return sign_session(settings.secret_key, user.id, user.session_epoch, session_id)


def _session_id(settings: Settings, cookie: str | None) -> tuple[int, int, str] | None:
    """(user id, epoch, session id) of a cookie whose signature and age are good."""
    if not cookie:
        return None
    data = read_session(settings.secret_key, cookie, settings.session_max_age)
    if data is None:
        return None
    user_id, epoch, session_id = data.get("u"), data.get("e"), data.get("s")
    if not isinstance(user_id, int) or not isinstance(epoch, int) or not isinstance(session_id, str):
        return None  # includes every cookie signed before sessions had rows
    return user_id, epoch, session_id


def session_user(*, db: Session, settings: Settings, cookie: str | None) -> User | None:
    """The active user whose live session the cookie names, or None."""
    parts = _session_id(settings, cookie)
    if parts is None:
        return None
    user_id, epoch, session_id = parts
    user = db.scalar(
        select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(
            UserSession.token_hash == hash_token(session_id),
            UserSession.user_id == user_id,
            UserSession.expires_at > utcnow(),
        )
    )
    if user is None or not user.is_active or user.session_epoch != epoch:
        return None
    return user


def end_session(*, db: Session, settings: Settings, cookie: str | None) -> int | None:
    """Delete the session the cookie names (logout). Returns its user's id, or None if there was none."""
    parts = _session_id(settings, cookie)
    if parts is None:
        return None
    user_id, _, session_id = parts
    ended = db.execute(
        delete(UserSession)
        .where(UserSession.token_hash == hash_token(session_id), UserSession.user_id == user_id)
        .returning(UserSession.user_id)
    ).first()
    return user_id if ended is not None else None


def end_all_sessions(*, db: Session, user: User) -> int:
    """End every session of the user (password change, deactivation). Returns how many were live."""
    user.session_epoch += 1
    now = utcnow()
    live = db.scalars(
        select(UserSession.id).where(UserSession.user_id == user.id, UserSession.expires_at > now)
    ).all()
    db.execute(delete(UserSession).where(UserSession.user_id == user.id))
    return len(live)

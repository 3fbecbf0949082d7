"""Password hashing, API tokens and signed session cookies."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

_hasher = PasswordHasher()
# A real hash to verify against when the user does not exist: the response time must not reveal usernames.
_DUMMY_HASH = _hasher.hash("timing-equaliser")

TOKEN_PREFIX = "ifk_"  # noqa: S105 - a public prefix that makes leaked tokens greppable


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_api_token() -> tuple[str, str, str]:
    """Returns (plaintext shown once, prefix for display, sha256 stored)."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return plain, plain[:12], hash_token(plain)


def hash_token(plain: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough (no dictionary to attack), and lookups stay O(1).
    return hashlib.sha256(plain.encode()).hexdigest()


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="instructforge-session")


def sign_session(secret: str, user_id: int, epoch: int, session_id: str) -> str:
    """The session cookie: the user, their session epoch and the id of the session row (app.auth.sessions)."""
    return _serializer(secret).dumps({"u": user_id, "e": epoch, "s": session_id})


def read_session(secret: str, cookie: str, max_age: int) -> dict[str, object] | None:
    try:
        data = _serializer(secret).loads(cookie, max_age=max_age)
    except BadSignature:
        return None
    return data if isinstance(data, dict) else None


def csrf_token_for(secret: str, cookie: str) -> str:
    """CSRF token bound to the session cookie (double-submit, signed): stateless and per-session."""
    return hmac.new(secret.encode(), b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def check_csrf(secret: str, cookie: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(csrf_token_for(secret, cookie), token)

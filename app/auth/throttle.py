"""Growing delays for password guessing, per account and per client address.

Every password check (API login, the login page, `POST /auth/tokens` with a password, a password change)
first takes the throttle rows of its account ("account:<name>", whether or not the account exists) and of
its client address ("client:<address>"). While either is blocked the attempt is refused with 429 and
Retry-After, before any password is checked. A failure counts against both: after
`IF_LOGIN_FREE_FAILURES` failures of an account (typos cost nothing), each further one blocks it for 1 s,
2 s, 4 s ... up to `IF_LOGIN_MAX_DELAY_SECONDS`; an address gets four times the allowance (several people
behind one NAT or proxy). A success clears the account's count, never the address's: an attacker cannot
reset their address by logging into an account of their own. Failures are forgotten a day after the last.

The store is a table of the application database, on PostgreSQL and SQLite alike, not Redis in production
and the database elsewhere: every API replica shares the database already, so the table is as shared as
Redis would be, with one code path on both stacks, tested like the rest (rolled back per test), and the
failure written in the same transaction as its audit entry. The load is one small row write per attempt.

Concurrent attempts on one account or address wait for each other (the rows are locked for the duration
of the check), so a burst of parallel guesses gets no more tries than the same guesses sent in a row.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.auth.models import LoginThrottle
from app.base import utcnow
from app.config import Settings
from app.db import insert_ignoring
from app.errors import DomainError

# A client address may fail this many times as often as one account before it is slowed down.
CLIENT_FACTOR = 4
# A run of failures is forgotten this long after its last failure.
FORGET_AFTER = timedelta(days=1)
KEY_CHARS = 200


class TooManyAttempts(DomainError):
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after} s", retry_after=retry_after)
        self.retry_after = retry_after


def keys_for(username: str, client: str) -> list[str]:
    """The throttle keys of an attempt, sorted: rows are always locked in this order (no deadlock)."""
    return sorted({f"account:{username.strip().lower()}"[:KEY_CHARS], f"client:{client}"[:KEY_CHARS]})


def _allowance(key: str, settings: Settings) -> int:
    free = settings.login_free_failures
    return free * CLIENT_FACTOR if key.startswith("client:") else free


def delay_after(failures: int, allowance: int, max_delay: int) -> int:
    """Seconds an account or address is blocked after its n-th failure in a row."""
    over = failures - allowance
    return 0 if over <= 0 else min(2 ** min(over - 1, 30), max_delay)


def guard(*, db: Session, keys: list[str]) -> list[LoginThrottle]:
    """Take (create and lock) the attempt's rows; refuse with TooManyAttempts while any is blocked."""
    now = utcnow()
    db.execute(
        insert_ignoring(db, LoginThrottle).values([{"key": k, "failures": 0, "seen_at": now} for k in keys])
    )
    rows = list(
        db.scalars(
            select(LoginThrottle)
            .where(LoginThrottle.key.in_(keys))
            .order_by(LoginThrottle.key)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    until = max((r.blocked_until for r in rows if r.blocked_until and r.blocked_until > now), default=None)
    if until is not None:
        raise TooManyAttempts(max(1, math.ceil((until - now).total_seconds())))
    return rows


def failed(*, db: Session, rows: list[LoginThrottle], settings: Settings) -> int:
    """Count a failure against every row; returns the seconds the attempt's keys are now blocked for."""
    now = utcnow()
    blocked = 0
    for row in rows:
        if row.failures and now - row.seen_at > FORGET_AFTER:
            row.failures = 0
        row.failures += 1
        row.seen_at = now
        delay = delay_after(row.failures, _allowance(row.key, settings), settings.login_max_delay_seconds)
        row.blocked_until = now + timedelta(seconds=delay) if delay else None
        blocked = max(blocked, delay)
    _forget_old(db, now)
    return blocked


def succeeded(*, db: Session, rows: list[LoginThrottle]) -> None:
    """The password was right: the account starts afresh; an address keeps its count (see above)."""
    for row in rows:
        if row.key.startswith("account:") or row.failures == 0:
            db.delete(row)


def _forget_old(db: Session, now: datetime) -> None:
    db.execute(
        delete(LoginThrottle).where(
            LoginThrottle.seen_at < now - FORGET_AFTER,
            or_(LoginThrottle.blocked_until.is_(None), LoginThrottle.blocked_until < now),
        )
    )

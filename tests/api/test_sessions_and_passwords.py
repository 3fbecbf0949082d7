"""Issue 16 §2: sessions end on the server, tokens die with a password change or a deactivation, users change
their own password, and password guessing is throttled (per account and per client address) and audited."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.models import AuditLog
from app.auth import service as auth_service
from app.auth import throttle
from app.auth.models import LoginThrottle
from app.config import get_settings
from app.deps import SESSION_COOKIE
from app.errors import Unauthorized
from tests.factories import PASSWORD, make_user, token_for

NEW_PASSWORD = "a brand new passphrase"


class Clock:
    """The throttle's clock, frozen: a test decides when a delay has passed."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(throttle, "utcnow", c)
    yield c


def _login(client, username: str, password: str = PASSWORD):
    return client.post("/api/v1/auth/login", json={"username": username, "password": password})


def _audit(db: Session, action: str) -> list[AuditLog]:
    return list(db.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


# ---------------------------------------------------------------- sessions


def test_logout_ends_the_session_on_the_server(client, db):
    user = make_user(db, "curator")
    assert _login(client, user.username).status_code == 200
    stolen = client.cookies[SESSION_COOKIE]
    assert client.get("/api/v1/auth/me").status_code == 200
    assert client.post("/api/v1/auth/logout").status_code == 204
    client.cookies.set(SESSION_COOKIE, stolen)  # the old cookie, replayed
    assert client.get("/api/v1/auth/me").status_code == 401
    assert client.get("/api/v1/projects").status_code == 401


def test_logout_ends_only_that_session(client, db):
    user = make_user(db, "curator")
    _login(client, user.username)
    laptop = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    _login(client, user.username)
    client.post("/api/v1/auth/logout")
    client.cookies.set(SESSION_COOKIE, laptop)
    assert client.get("/api/v1/auth/me").status_code == 200


def test_an_admin_setting_a_password_ends_sessions_and_revokes_tokens(client, db):
    admin, user = make_user(db, "admin"), make_user(db, "curator")
    token = token_for(db, user)
    _login(client, user.username)
    cookie = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    resp = client.patch(
        f"/api/v1/users/{user.id}", json={"password": NEW_PASSWORD}, headers=token_for(db, admin)
    )
    assert resp.status_code == 200
    assert client.get("/api/v1/projects", headers=token).status_code == 401
    client.cookies.set(SESSION_COOKIE, cookie)
    assert client.get("/api/v1/auth/me").status_code == 401
    client.cookies.clear()
    assert _login(client, user.username, NEW_PASSWORD).status_code == 200


def test_reactivating_a_user_does_not_revive_old_tokens_or_sessions(client, db):
    admin, user = make_user(db, "admin"), make_user(db, "curator")
    ha, token = token_for(db, admin), token_for(db, user)
    _login(client, user.username)
    cookie = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    client.patch(f"/api/v1/users/{user.id}", json={"is_active": False}, headers=ha)
    client.patch(f"/api/v1/users/{user.id}", json={"is_active": True}, headers=ha)
    assert client.get("/api/v1/projects", headers=token).status_code == 401
    client.cookies.set(SESSION_COOKIE, cookie)
    assert client.get("/api/v1/auth/me").status_code == 401
    client.cookies.clear()
    assert client.get("/api/v1/projects", headers=token_for(db, user)).status_code == 200  # new ones work


# ---------------------------------------------------------------- changing one's own password


def test_users_change_their_own_password_with_the_current_one(client, db):
    user = make_user(db, "annotator")
    old_token = token_for(db, user)
    login = _login(client, user.username).json()
    other_browser = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    _login(client, user.username)
    csrf = client.get("/api/v1/auth/me").json()["csrf_token"]
    resp = client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={"X-CSRF-Token": csrf},
    )
    assert resp.status_code == 204, resp.text
    assert client.get("/api/v1/auth/me").status_code == 200  # this browser got a new session
    assert client.get("/api/v1/projects", headers=old_token).status_code == 401
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, other_browser)
    assert client.get("/api/v1/auth/me").status_code == 401
    client.cookies.clear()
    assert _login(client, user.username).status_code == 401
    assert _login(client, user.username, NEW_PASSWORD).status_code == 200
    assert login["user"]["id"] == user.id
    [entry] = _audit(db, "user.password_change")
    assert entry.user_id == user.id and entry.detail["tokens_revoked"] == 1


def test_a_wrong_current_password_changes_nothing(client, db):
    user = make_user(db, "annotator")
    h = token_for(db, user)
    resp = client.post(
        "/api/v1/auth/password",
        json={"current_password": "not my password", "new_password": NEW_PASSWORD},
        headers=h,
    )
    assert resp.status_code == 422 and resp.json()["field"] == "current_password"
    assert client.get("/api/v1/projects", headers=h).status_code == 200
    assert _login(client, user.username).status_code == 200
    assert len(_audit(db, "user.password_change_failed")) == 1


def test_password_change_needs_a_login_and_a_long_enough_password(client, db):
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert client.post("/api/v1/auth/password", json=body).status_code == 401
    h = token_for(db, make_user(db, "annotator"))
    short = client.post("/api/v1/auth/password", json={**body, "new_password": "short"}, headers=h)
    assert short.status_code == 422


# ---------------------------------------------------------------- throttling


def test_forty_wrong_passwords_are_throttled_and_the_right_one_waits_too(client, db, clock):
    user = make_user(db, "curator")
    statuses = [_login(client, user.username, f"guess-{i}").status_code for i in range(40)]
    free = get_settings().login_free_failures
    assert statuses[: free + 1] == [401] * (free + 1)
    assert set(statuses[free + 1 :]) == {429}
    right = _login(client, user.username)
    assert right.status_code == 429
    assert right.headers["retry-after"] == "1" and right.json()["retry_after"] == 1
    clock.advance(1)
    assert _login(client, user.username).status_code == 200


def test_delays_grow_with_each_failure_after_the_free_ones(client, db, clock):
    user = make_user(db, "curator")
    free = get_settings().login_free_failures
    for _ in range(free):
        assert _login(client, user.username, "wrong password").status_code == 401
    waits = []
    for _ in range(4):
        assert _login(client, user.username, "wrong password").status_code == 401
        refused = _login(client, user.username, "wrong password")
        assert refused.status_code == 429
        waits.append(int(refused.headers["retry-after"]))
        clock.advance(waits[-1])
    assert waits == [1, 2, 4, 8]


def test_token_requests_with_a_password_are_throttled_like_logins(client, db, clock):
    user = make_user(db, "curator")
    body = {"username": user.username, "password": "wrong password"}
    statuses = [client.post("/api/v1/auth/tokens", json=body).status_code for _ in range(8)]
    assert 429 in statuses and statuses[0] == 401
    ok = client.post("/api/v1/auth/tokens", json={"username": user.username, "password": PASSWORD})
    assert ok.status_code == 429 and int(ok.headers["retry-after"]) >= 1


def test_one_client_address_guessing_many_accounts_is_throttled(client, db, clock, monkeypatch):
    monkeypatch.setattr(get_settings(), "login_free_failures", 2)  # an address: 4 x 2 free failures
    user = make_user(db, "curator")
    statuses = [_login(client, f"someone-{i}", "password1").status_code for i in range(10)]
    assert statuses[:9] == [401] * 9 and statuses[9] == 429
    assert _login(client, user.username).status_code == 429  # the address waits, whatever the account


def test_an_account_is_throttled_whichever_address_guesses(db, clock):
    user = make_user(db, "curator")
    for i in range(get_settings().login_free_failures + 1):
        with pytest.raises(Unauthorized):
            auth_service.authenticate(db=db, username=user.username, password="nope", client=f"10.0.0.{i}")
    with pytest.raises(throttle.TooManyAttempts):
        auth_service.authenticate(db=db, username=user.username, password=PASSWORD, client="10.9.9.9")


def test_a_success_clears_the_account_count_but_not_the_address_count(db, clock):
    user = make_user(db, "curator")
    for _ in range(3):
        with pytest.raises(Unauthorized):
            auth_service.authenticate(db=db, username=user.username, password="nope", client="10.1.1.1")
    auth_service.authenticate(db=db, username=user.username, password=PASSWORD, client="10.1.1.1")
    rows = {r.key: r.failures for r in db.scalars(select(LoginThrottle))}
    assert f"account:{user.username.lower()}" not in rows and rows["client:10.1.1.1"] == 3


def test_failed_and_successful_logins_and_logouts_are_audited(client, db, clock):
    user = make_user(db, "curator")
    _login(client, user.username, "wrong password")
    _login(client, "nobody-here", "wrong password")
    _login(client, user.username)
    client.post("/api/v1/auth/logout")
    failed = _audit(db, "auth.login_failed")
    assert [(f.user_id, f.detail["username"], f.detail["reason"]) for f in failed] == [
        (user.id, user.username, "wrong password"),
        (None, "nobody-here", "unknown user"),
    ]
    assert all(f.detail["client"] == "testclient" and f.detail["via"] == "api" for f in failed)
    assert [e.user_id for e in _audit(db, "auth.login")] == [user.id]
    assert [e.user_id for e in _audit(db, "auth.logout")] == [user.id]


def test_parallel_guesses_get_no_more_tries_than_guesses_in_a_row(committed, monkeypatch):
    """Attempts on one account wait for each other: a burst cannot slip past the count before it grows."""
    from app.db import session_scope

    monkeypatch.setattr(get_settings(), "login_free_failures", 2)
    with Session(committed) as db:
        username = make_user(db, "curator").username
        db.commit()

    def guess(i: int) -> str:
        try:
            with session_scope() as db:
                auth_service.authenticate(db=db, username=username, password=f"guess-{i}", client=f"c{i}")
        except Unauthorized:
            return "401"
        except throttle.TooManyAttempts:
            return "429"
        return "200"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(guess, range(8)))
    # 2 free failures and the third, which blocks for 1 s; the others meet the block (on a slow machine
    # one more may come after it ended). Unserialised, all 8 would have been checked: eight 401s.
    assert results.count("401") <= 4 and results.count("429") >= 4, results


def test_upgrading_revokes_the_tokens_of_users_deactivated_before(tmp_path):
    """Before 0003 a deactivation left tokens unrevoked: reactivating would have revived them."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from app.migrate import alembic_config, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0002")
    engine = create_engine(url)
    with engine.begin() as conn:
        for uid, active in ((1, False), (2, True)):
            conn.execute(
                text(
                    "INSERT INTO users (id, username, password_hash, role, is_active, session_epoch, "
                    "created_at, updated_at) VALUES (:id, :name, 'x', 'curator', :active, 0, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": uid, "name": f"u{uid}", "active": active},
            )
            conn.execute(
                text(
                    "INSERT INTO api_tokens (user_id, name, prefix, token_hash, revoked, created_at, "
                    "updated_at) VALUES (:id, 't', 'ifk_', :hash, FALSE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": uid, "hash": f"h{uid}"},
            )
    upgrade(url)
    with engine.connect() as conn:
        revoked = dict(conn.execute(text("SELECT user_id, revoked FROM api_tokens")).tuples().all())
    assert revoked == {1: True, 2: False}
    command.downgrade(alembic_config(url), "0002")  # and back: the revision undoes cleanly
    upgrade(url)
    engine.dispose()

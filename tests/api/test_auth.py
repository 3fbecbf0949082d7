from __future__ import annotations

from app.auth.models import ApiToken
from app.auth.security import hash_token
from tests.factories import PASSWORD, make_user, token_for


def test_login_sets_httponly_samesite_cookie_and_returns_csrf(client, db):
    make_user(db, "curator", username="carol")
    resp = client.post("/api/v1/auth/login", json={"username": "carol", "password": PASSWORD})
    assert resp.status_code == 200
    cookie = resp.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert resp.json()["user"]["username"] == "carol"
    assert len(resp.json()["csrf_token"]) == 64


def test_wrong_password_and_unknown_user_get_the_same_401(client, db):
    make_user(db, "curator", username="dave")
    a = client.post("/api/v1/auth/login", json={"username": "dave", "password": "nope-nope"})
    b = client.post("/api/v1/auth/login", json={"username": "nobody", "password": "nope-nope"})
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json()


def test_cookie_writes_need_csrf_token_but_bearer_tokens_do_not(client, db):
    make_user(db, "curator", username="erin")
    login = client.post("/api/v1/auth/login", json={"username": "erin", "password": PASSWORD}).json()
    refused = client.post("/api/v1/projects", json={"name": "p-csrf"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    ok = client.post(
        "/api/v1/projects", json={"name": "p-csrf"}, headers={"X-CSRF-Token": login["csrf_token"]}
    )
    assert ok.status_code == 201


def test_api_tokens_are_stored_hashed_and_revocable(client, db):
    make_user(db, "curator", username="fay")
    created = client.post("/api/v1/auth/tokens", json={"username": "fay", "password": PASSWORD, "name": "ci"})
    assert created.status_code == 201
    plain = created.json()["token"]
    stored = db.get(ApiToken, created.json()["id"])
    assert stored is not None and stored.token_hash == hash_token(plain) and plain not in stored.token_hash
    headers = {"Authorization": f"Bearer {plain}"}
    assert client.get("/api/v1/projects", headers=headers).status_code == 200
    assert client.delete(f"/api/v1/auth/tokens/{stored.id}", headers=headers).status_code == 204
    assert client.get("/api/v1/projects", headers=headers).status_code == 401


def test_requests_without_credentials_are_401(client):
    assert client.get("/api/v1/projects").status_code == 401


def test_only_admins_create_users(client, db):
    admin, curator = make_user(db, "admin"), make_user(db, "curator")
    body = {"username": "newbie", "password": "long-enough-pw", "role": "annotator"}
    assert client.post("/api/v1/users", json=body, headers=token_for(db, curator)).status_code == 403
    resp = client.post("/api/v1/users", json=body, headers=token_for(db, admin))
    assert resp.status_code == 201 and resp.json()["role"] == "annotator"


def test_deactivated_user_loses_access(client, db):
    admin, user = make_user(db, "admin"), make_user(db, "curator")
    headers = token_for(db, user)
    client.patch(f"/api/v1/users/{user.id}", json={"is_active": False}, headers=token_for(db, admin))
    assert client.get("/api/v1/projects", headers=headers).status_code == 401


def test_health_reports_database(client):
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok" and body["checks"]["database"] == "ok"


def test_default_secret_refused_in_production(monkeypatch):
    import pytest
    from pydantic import ValidationError

    from app.config import Settings

    monkeypatch.delenv("IF_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="IF_SECRET_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="IF_SECRET_KEY"):
        Settings(env="test", secret_key="short")
    assert Settings(env="development").env == "development"
    assert Settings(env="production", secret_key="k" * 40).env == "production"

"""Issue 16 §2 and §4 in the web UI: logout ends the session on the server, the login form is throttled,
users change their own password on their account page, admins read the audit log."""

from __future__ import annotations

import re

from sqlalchemy import select

from app.audit.models import AuditLog
from app.deps import SESSION_COOKIE
from tests.api.test_sessions_and_passwords import NEW_PASSWORD, clock  # noqa: F401 - the fixture
from tests.factories import PASSWORD, make_project, make_user, token_for
from tests.ui.test_pages import login, token_in


def _login_form(client, username: str, password: str):
    token = token_in(client.get("/login").text, r'name="csrf_token" value="([^"]+)"')
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/ui"},
        follow_redirects=False,
    )


def test_logout_from_the_page_ends_the_session_on_the_server(client, db):
    user = make_user(db, "annotator")
    csrf = login(client, user)
    stolen = client.cookies[SESSION_COOKIE]
    client.post("/logout", data={"csrf_token": csrf})
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, stolen)
    resp = client.get("/ui", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
    assert [e.user_id for e in db.scalars(select(AuditLog).where(AuditLog.action == "auth.logout"))] == [
        user.id
    ]


def test_the_login_form_is_throttled_and_says_when_to_try_again(client, db, clock):  # noqa: F811
    from app.config import get_settings

    user = make_user(db, "curator")
    for _ in range(get_settings().login_free_failures + 1):
        assert _login_form(client, user.username, "wrong password").status_code == 401
    refused = _login_form(client, user.username, PASSWORD)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "try again in 1 s" in refused.text and SESSION_COOKIE not in client.cookies
    failed = db.scalars(select(AuditLog).where(AuditLog.action == "auth.login_failed")).all()
    assert {(f.detail["via"], f.detail["client"]) for f in failed} == {("ui", "testclient")}
    clock.advance(1)
    assert _login_form(client, user.username, PASSWORD).status_code == 303


def test_users_change_their_password_on_their_account_page(client, db):
    user = make_user(db, "annotator")
    token = token_for(db, user)
    csrf = login(client, user)
    page = client.get("/ui/account")
    assert page.status_code == 200 and 'name="current_password"' in page.text
    resp = client.post(
        "/ui/account/password",
        data={
            "csrf_token": csrf,
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
        follow_redirects=False,
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/account"
    after = client.get("/ui/account")  # this browser's new session
    assert (
        after.status_code == 200 and "password changed" in after.text and "1 API tokens ended" in after.text
    )
    assert client.get("/api/v1/projects", headers=token).status_code == 401
    client.cookies.clear()
    assert _login_form(client, user.username, PASSWORD).status_code == 401
    assert _login_form(client, user.username, NEW_PASSWORD).status_code == 303


def test_the_account_page_refuses_a_wrong_current_password_or_a_mistyped_new_one(client, db):
    user = make_user(db, "annotator")
    csrf = login(client, user)
    body = {"csrf_token": csrf, "current_password": "not mine", "new_password": NEW_PASSWORD}
    wrong = client.post("/ui/account/password", data={**body, "confirm_password": NEW_PASSWORD})
    assert wrong.status_code == 422 and "current password is wrong" in wrong.text
    typo = client.post(
        "/ui/account/password", data={**body, "current_password": PASSWORD, "confirm_password": "other"}
    )
    assert typo.status_code == 422 and "differ" in typo.text
    client.cookies.clear()
    assert _login_form(client, user.username, PASSWORD).status_code == 303


def test_admins_read_and_filter_the_audit_log_page(client, db):
    admin, curator = make_user(db, "admin"), make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    client.patch(
        f"/api/v1/projects/{project.id}",
        json={"description": "new words"},
        headers=token_for(db, curator),
    )
    login(client, admin)
    page = client.get("/ui/audit", params={"actor": curator.username})
    assert page.status_code == 200
    assert "token.create" in page.text and "Audit log" in page.text
    assert admin.username not in re.sub(r"<header.*?</header>", "", page.text, flags=re.S)
    only_logins = client.get("/ui/audit", params={"action": "auth.*"})
    assert "auth.login" in only_logins.text and "token.create" not in only_logins.text
    bad = client.get("/ui/audit", params={"since": "yesterday"})
    assert bad.status_code == 422 and "since" in bad.text


def test_the_audit_page_pages_back_through_older_entries(client, db, monkeypatch):
    from app.ui.pages import audit as audit_page

    monkeypatch.setattr(audit_page, "PAGE", 2)
    admin = make_user(db, "admin")
    for _ in range(3):
        token_for(db, admin)
    login(client, admin)
    first = client.get("/ui/audit", params={"action": "token.create"})
    older = token_in(first.text, r'href="(/ui/audit\?[^"]*before_id=\d+)"').replace("&amp;", "&")
    second = client.get(older)
    assert second.status_code == 200 and second.text.count("token.create") >= 1
    assert "action=token.create" in older


def test_only_admins_see_the_audit_log(client, db):
    curator = make_user(db, "curator")
    login(client, curator)
    assert client.get("/ui/audit").status_code == 403
    assert 'href="/ui/audit"' not in client.get("/ui").text
    assert 'href="/ui/account"' in client.get("/ui").text

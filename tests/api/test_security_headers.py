"""Issue 16 §5: every response carries the security headers, not only HTML pages; the flash cookie is
Secure when IF_COOKIE_SECURE is on."""

from __future__ import annotations

import re

from app.config import get_settings
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from tests.factories import PASSWORD, make_dataset, make_project, make_records, make_user, token_for


def test_api_answers_are_not_sniffed_framed_scripted_or_cached(client, db):
    user = make_user(db, "curator")
    resp = client.get("/api/v1/projects", headers=token_for(db, user))
    assert resp.status_code == 200
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert resp.headers["cache-control"] == "no-store"
    refused = client.get("/api/v1/projects")
    assert refused.status_code == 401 and refused.headers["x-content-type-options"] == "nosniff"


def test_downloads_are_never_sniffed(client, db):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    make_records(db, dataset, 2, status="accepted")
    snap = snapshots.create_snapshot(
        db=db, user=curator, dataset_id=dataset.id, name="s", description="", flt=RecordFilter()
    )
    resp = client.get(f"/api/v1/snapshots/{snap.id}/export", headers=token_for(db, curator))
    assert resp.status_code == 200
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "attachment" in resp.headers["content-disposition"]


def test_docs_cannot_be_framed(client):
    resp = client.get("/docs")
    assert resp.status_code == 200
    assert resp.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_pages_keep_their_own_stricter_policy(client):
    resp = client.get("/login")
    assert "script-src 'self'" in resp.headers["content-security-policy"]


def test_flash_cookie_is_secure_when_cookies_are(client, db, monkeypatch):
    monkeypatch.setattr(get_settings(), "cookie_secure", True)
    client.base_url = "https://testserver"  # Secure cookies travel over https only
    user = make_user(db, "curator")
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    client.post(
        "/login",
        data={"username": user.username, "password": PASSWORD, "csrf_token": token.group(1), "next": "/ui"},
        follow_redirects=False,
    )
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/ui").text)
    assert csrf is not None
    resp = client.post(
        "/ui/projects", data={"name": "flashy", "csrf_token": csrf.group(1)}, follow_redirects=False
    )
    assert resp.status_code == 303
    flash = [c for c in resp.headers.get_list("set-cookie") if c.startswith("if_flash=")]
    assert flash and "secure" in flash[0].lower()

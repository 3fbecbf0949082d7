"""Issue 16 §4: admins read the audit log through GET /audit, filtered by actor, project, action, entity and
time, newest first, a page at a time; nobody else reads it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.factories import make_project, make_user, token_for


@pytest.fixture
def team(db):
    admin, curator, annotator = make_user(db, "admin"), make_user(db, "curator"), make_user(db, "annotator")
    return {
        "admin": admin,
        "curator": curator,
        "project": make_project(db, (curator, "curator"), (annotator, "annotator")),
        "ha": token_for(db, admin),
        "hc": token_for(db, curator),
        "hn": token_for(db, annotator),
    }


def _search(client, h, **params: Any):
    return client.get("/api/v1/audit", params=params, headers=h)


def test_only_admins_read_the_audit_log(client, db, team):
    assert _search(client, team["hc"]).status_code == 403
    assert _search(client, team["hn"]).status_code == 403
    assert _search(client, team["ha"]).status_code == 200


def test_admins_filter_the_audit_log_by_actor_project_action_entity_and_time(client, db, team):
    other = make_project(db, (team["curator"], "curator"))
    pid = team["project"].id
    client.patch(f"/api/v1/projects/{pid}", json={"description": "x"}, headers=team["hc"])
    client.patch(f"/api/v1/projects/{other.id}", json={"description": "y"}, headers=team["hc"])
    h = team["ha"]

    by_project = _search(client, h, project_id=pid, action="project.update").json()["items"]
    assert [(e["entity_id"], e["username"]) for e in by_project] == [(str(pid), team["curator"].username)]
    by_actor = _search(client, h, actor=team["curator"].username.upper(), action="project.*").json()["items"]
    assert {e["project_id"] for e in by_actor} == {pid, other.id}
    by_entity = _search(client, h, entity_type="project", entity_id=str(other.id)).json()["items"]
    assert [e["action"] for e in by_entity] == ["project.update"]
    assert _search(client, h, actor_id=team["admin"].id, action="project.update").json()["items"] == []
    now = datetime.now(UTC)
    assert _search(client, h, since=(now - timedelta(minutes=5)).isoformat(), action="project.update").json()[
        "items"
    ]
    assert not _search(
        client, h, until=(now - timedelta(days=1)).isoformat(), action="project.update"
    ).json()["items"]


def test_the_audit_log_pages_newest_first(client, db, team):
    for _ in range(3):
        token_for(db, team["admin"])
    h = team["ha"]
    first = _search(client, h, action="token.create", actor=team["admin"].username, limit=2).json()
    assert len(first["items"]) == 2 and first["next_before_id"] is not None
    ids = [e["id"] for e in first["items"]]
    assert ids == sorted(ids, reverse=True)
    rest = _search(
        client,
        h,
        action="token.create",
        actor=team["admin"].username,
        limit=2,
        before_id=first["next_before_id"],
    ).json()
    assert rest["next_before_id"] is None
    assert len(rest["items"]) == 2 and max(e["id"] for e in rest["items"]) < min(ids)

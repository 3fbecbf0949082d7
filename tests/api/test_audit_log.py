"""Issue 16 §4: the audit log answers "who changed what, and from what": every state change with its actor,
project, target and the before/after of what changed (reading it: test_audit_search.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from tests.api.test_visibility import make_run
from tests.factories import PASSWORD, make_dataset, make_project, make_records, make_user, token_for


@pytest.fixture
def team(db):
    admin, curator, annotator = make_user(db, "admin"), make_user(db, "curator"), make_user(db, "annotator")
    project = make_project(db, (curator, "curator"), (annotator, "annotator"))
    dataset = make_dataset(db, project)
    return {
        "admin": admin,
        "curator": curator,
        "annotator": annotator,
        "project": project,
        "dataset": dataset,
        "records": make_records(db, dataset, 3),
        "ha": token_for(db, admin),
        "hc": token_for(db, curator),
        "hn": token_for(db, annotator),
    }


def entries(db, action: str) -> list[AuditLog]:
    return list(db.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


def only(db, action: str) -> AuditLog:
    found = entries(db, action)
    assert len(found) == 1, [(e.action, e.detail) for e in found]
    return found[0]


# ---------------------------------------------------------------- what is recorded


def test_review_decisions_and_undo_are_in_the_audit_log(client, db, team):
    rec = team["records"][0]
    resp = client.post(
        f"/api/v1/review/records/{rec.id}/decision",
        json={"action": "accept", "version": rec.version},
        headers=team["hn"],
    )
    assert resp.status_code == 200, resp.text
    accepted = only(db, "review.accept")
    assert accepted.user_id == team["annotator"].id and accepted.project_id == team["project"].id
    assert (accepted.entity_type, accepted.entity_id) == ("record", str(rec.id))
    assert (
        accepted.detail["before"]["status"] == "pending" and accepted.detail["after"]["status"] == "accepted"
    )
    assert (
        client.post(f"/api/v1/review/datasets/{team['dataset'].id}/undo", headers=team["hn"]).status_code
        == 200
    )
    undone = only(db, "review.undo")
    assert undone.detail["before"]["status"] == "accepted" and undone.detail["after"]["status"] == "pending"
    assert undone.project_id == team["project"].id


def test_assignments_are_in_the_audit_log(client, db, team):
    resp = client.post(
        f"/api/v1/review/datasets/{team['dataset'].id}/assignments",
        json={"user_ids": [team["annotator"].id], "k": 1},
        headers=team["hc"],
    )
    assert resp.status_code == 201, resp.text
    entry = only(db, "assignment.create")
    assert entry.user_id == team["curator"].id and entry.project_id == team["project"].id
    assert entry.detail["user_ids"] == [team["annotator"].id] and entry.detail["assignments"] == 3


def test_token_creation_and_revocation_are_in_the_audit_log(client, db, team):
    body = {"name": "ci", "username": team["curator"].username, "password": PASSWORD}
    made = client.post("/api/v1/auth/tokens", json=body)
    assert made.status_code == 201
    tid = made.json()["id"]
    assert client.delete(f"/api/v1/auth/tokens/{tid}", headers=team["hc"]).status_code == 204
    create = [e for e in entries(db, "token.create") if e.entity_id == str(tid)]
    revoke = only(db, "token.revoke")
    assert create and create[0].detail["name"] == "ci" and revoke.entity_id == str(tid)
    assert revoke.user_id == team["curator"].id


def test_exports_and_artifact_downloads_are_in_the_audit_log(client, db, team, tmp_path):
    for r in team["records"]:
        r.status = "accepted"
    db.flush()
    snap = snapshots.create_snapshot(
        db=db,
        user=team["curator"],
        dataset_id=team["dataset"].id,
        name="s1",
        description="",
        flt=RecordFilter(),
    )
    assert (
        client.get(
            f"/api/v1/snapshots/{snap.id}/export", params={"format": "openai"}, headers=team["hc"]
        ).status_code
        == 200
    )
    export = only(db, "snapshot.export")
    assert export.project_id == team["project"].id and export.detail["format"] == "openai"
    run = make_run(db, team["project"].id, tmp_path / "run")
    url = f"/api/v1/training-runs/{run.id}/artifacts/dataset.jsonl"
    assert client.get(url, headers=team["hc"]).status_code == 200
    download = only(db, "training.artifact_download")
    assert download.user_id == team["curator"].id and download.detail["path"] == "dataset.jsonl"
    assert download.project_id == team["project"].id


def test_project_updates_and_member_changes_keep_what_was_before(client, db, team):
    pid = team["project"].id
    old_name = team["project"].name
    assert (
        client.patch(f"/api/v1/projects/{pid}", json={"name": "renamed"}, headers=team["hc"]).status_code
        == 200
    )
    update = only(db, "project.update")
    assert update.detail["before"] == {"name": old_name} and update.detail["after"] == {"name": "renamed"}
    body = {"user_id": team["annotator"].id, "role": "curator"}
    assert client.put(f"/api/v1/projects/{pid}/members", json=body, headers=team["hc"]).status_code == 200
    member = only(db, "member.set")
    assert member.detail["before"] == {"role": "annotator"} and member.detail["after"] == {"role": "curator"}


def test_user_updates_keep_what_was_before_and_never_the_password(client, db, team):
    target = team["annotator"]
    resp = client.patch(
        f"/api/v1/users/{target.id}",
        json={"role": "curator", "password": "another long password"},
        headers=team["ha"],
    )
    assert resp.status_code == 200
    update = only(db, "user.update")
    assert update.detail["before"] == {"role": "annotator", "password": None}
    assert update.detail["after"] == {"role": "curator", "password": "changed"}
    assert "another long password" not in str(update.detail)
    revoked = only(db, "token.revoke")
    assert revoked.detail["reason"] == "password set by an admin" and revoked.user_id == team["admin"].id


def test_record_edits_name_their_project_and_what_changed(client, db, team):
    rec = team["records"][1]
    resp = client.patch(
        f"/api/v1/records/{rec.id}",
        json={"version": rec.version, "output": "better", "status": "accepted"},
        headers=team["hc"],
    )
    assert resp.status_code == 200, resp.text
    edit = only(db, "record.edit")
    assert edit.project_id == team["project"].id
    assert edit.detail["before"]["status"] == "pending" and edit.detail["after"]["status"] == "accepted"
    assert edit.detail["content_fields"] == ["output"]


def test_dataset_updates_keep_what_was_before(client, db, team):
    ds = team["dataset"]
    old = ds.guidelines
    resp = client.patch(f"/api/v1/datasets/{ds.id}", json={"guidelines": "Be strict."}, headers=team["hc"])
    assert resp.status_code == 200, resp.text
    update = only(db, "dataset.update")
    assert update.detail["before"] == {"guidelines": old} and update.detail["after"] == {
        "guidelines": "Be strict."
    }
    assert update.project_id == team["project"].id

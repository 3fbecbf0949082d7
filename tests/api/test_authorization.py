"""Each role is refused what it may not do; project A's users cannot read or guess project B's ids."""

from __future__ import annotations

import pytest

from tests.factories import make_dataset, make_project, make_records, make_user, token_for


@pytest.fixture
def world(db):
    admin = make_user(db, "admin")
    curator_a, annotator_a, curator_b = (
        make_user(db, "curator"),
        make_user(db, "annotator"),
        make_user(db, "curator"),
    )
    pa = make_project(db, (curator_a, "curator"), (annotator_a, "annotator"))
    pb = make_project(db, (curator_b, "curator"))
    da, db_ = make_dataset(db, pa), make_dataset(db, pb)
    ra, rb = make_records(db, da, 3), make_records(db, db_, 3)
    return {
        "admin": admin,
        "curator_a": curator_a,
        "annotator_a": annotator_a,
        "curator_b": curator_b,
        "pa": pa,
        "pb": pb,
        "da": da,
        "db": db_,
        "ra": ra,
        "rb": rb,
    }


def test_annotator_sees_only_their_projects(client, db, world):
    h = token_for(db, world["annotator_a"])
    ids = [p["id"] for p in client.get("/api/v1/projects", headers=h).json()]
    assert ids == [world["pa"].id]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/projects/{pb}",
        "/api/v1/datasets/{db}",
        "/api/v1/records/{rb}",
        "/api/v1/datasets/{db}/records",
        "/api/v1/projects/{pb}/members",
    ],
)
def test_user_of_project_a_gets_404_for_project_b(client, db, world, path):
    h = token_for(db, world["curator_a"])
    url = path.format(pb=world["pb"].id, db=world["db"].id, rb=world["rb"][0].id)
    resp = client.get(url, headers=h)
    assert resp.status_code == 404


def test_guessing_neighbouring_record_ids_reveals_nothing(client, db, world):
    h = token_for(db, world["curator_a"])
    own = {r.id for r in world["ra"]}
    for rid in range(min(own) - 5, max(r.id for r in world["rb"]) + 5):
        status = client.get(f"/api/v1/records/{rid}", headers=h).status_code
        assert status == (200 if rid in own else 404)
    resp = client.patch(f"/api/v1/records/{world['rb'][0].id}", json={"version": 1, "output": "x"}, headers=h)
    assert resp.status_code == 404


def test_annotator_cannot_start_jobs_import_export_or_manage(client, db, world):
    h = token_for(db, world["annotator_a"])
    ds = world["da"].id
    assert (
        client.post(
            "/api/v1/jobs", json={"kind": "import", "dataset_id": ds, "params": {"upload": "x"}}, headers=h
        ).status_code
        == 403
    )
    assert (
        client.post(
            f"/api/v1/datasets/{ds}/import", content=b'{"instruction":"a","output":"b"}', headers=h
        ).status_code
        == 403
    )
    assert client.post(f"/api/v1/datasets/{ds}/snapshots", json={"name": "s"}, headers=h).status_code == 403
    assert (
        client.post("/api/v1/users", json={"username": "x", "password": "12345678"}, headers=h).status_code
        == 403
    )
    assert client.get("/api/v1/users", headers=h).status_code == 403
    assert (
        client.put(
            f"/api/v1/projects/{world['pa'].id}/members",
            json={"user_id": world["annotator_a"].id, "role": "curator"},
            headers=h,
        ).status_code
        == 403
    )
    assert (
        client.post(
            f"/api/v1/datasets/{ds}/records/bulk-status", json={"filter": {}, "status": "accepted"}, headers=h
        ).status_code
        == 403
    )
    assert client.post("/api/v1/projects", json={"name": "mine"}, headers=h).status_code == 403


def test_annotator_can_review_records_of_their_project(client, db, world):
    h = token_for(db, world["annotator_a"])
    rec = world["ra"][0]
    resp = client.patch(
        f"/api/v1/records/{rec.id}", json={"version": 1, "status": "accepted", "rating": 5}, headers=h
    )
    assert resp.status_code == 200 and resp.json()["status"] == "accepted" and resp.json()["rating"] == 5


def test_curator_cannot_touch_other_projects_but_admin_can(client, db, world):
    hc, ha = token_for(db, world["curator_a"]), token_for(db, world["admin"])
    ds_b = world["db"].id
    assert (
        client.post(f"/api/v1/datasets/{ds_b}/snapshots", json={"name": "s"}, headers=hc).status_code == 404
    )
    assert client.get(f"/api/v1/datasets/{ds_b}/records", headers=ha).status_code == 200


def test_curator_manages_members_of_own_project(client, db, world):
    h = token_for(db, world["curator_a"])
    newbie = make_user(db, "annotator")
    resp = client.put(
        f"/api/v1/projects/{world['pa'].id}/members",
        json={"user_id": newbie.id, "role": "annotator"},
        headers=h,
    )
    assert resp.status_code == 200
    assert client.get(f"/api/v1/projects/{world['pa'].id}", headers=token_for(db, newbie)).status_code == 200

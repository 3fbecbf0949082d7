from __future__ import annotations

import pytest

from app.records.models import RecordRevision
from tests.factories import make_dataset, make_project, make_records, make_user, token_for


@pytest.fixture
def setup(db, backend):
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project)
    return curator, dataset, token_for(db, curator)


def test_cursor_pagination_visits_every_record_once(client, db, setup):
    _, dataset, h = setup
    records = make_records(db, dataset, 23)
    seen, cursor = [], None
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/api/v1/datasets/{dataset.id}/records", params=params, headers=h).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(r.id for r in records)


def test_filters_by_status_source_tag_and_text(client, db, setup):
    _, dataset, h = setup
    make_records(db, dataset, 3, status="accepted", source="seed")
    make_records(
        db, dataset, 2, status="rejected", source="evol:deepen", instruction="Explain Quantum tunnelling"
    )
    tagged = make_records(db, dataset, 1)[0]
    url = f"/api/v1/datasets/{dataset.id}/records"
    client.patch(f"/api/v1/records/{tagged.id}", json={"version": 1, "tags": ["gold", "math"]}, headers=h)

    def ids(**params):
        return [r["id"] for r in client.get(url, params=params, headers=h).json()["items"]]

    assert len(ids(status="accepted")) == 3
    assert len(ids(status=["accepted", "rejected"])) == 5
    assert len(ids(source="evol:*")) == 2
    assert ids(tag="gold") == [tagged.id]
    assert len(ids(q="quantum TUNNEL")) == 2
    assert ids(q="%") == []  # LIKE wildcards are escaped


def test_edit_keeps_every_revision_with_author(client, db, setup):
    curator, dataset, h = setup
    rec = make_records(db, dataset, 1, output="original answer")[0]
    r1 = client.patch(f"/api/v1/records/{rec.id}", json={"version": 1, "output": "better answer"}, headers=h)
    assert r1.status_code == 200 and r1.json()["version"] == 2
    client.patch(f"/api/v1/records/{rec.id}", json={"version": 2, "output": "best answer"}, headers=h)
    revs = client.get(f"/api/v1/records/{rec.id}/revisions", headers=h).json()
    assert [(r["version"], r["output"]) for r in revs] == [
        (1, "original answer"),
        (2, "better answer"),
        (3, "best answer"),
    ]
    assert revs[1]["edited_by"] == curator.id
    assert db.query(RecordRevision).filter_by(record_id=rec.id).count() == 3


def test_stale_edit_is_refused_with_409_not_lost(client, db, setup):
    _, dataset, h = setup
    rec = make_records(db, dataset, 1)[0]
    assert (
        client.patch(f"/api/v1/records/{rec.id}", json={"version": 1, "output": "A"}, headers=h).status_code
        == 200
    )
    stale = client.patch(f"/api/v1/records/{rec.id}", json={"version": 1, "output": "B"}, headers=h)
    assert stale.status_code == 409 and "reload" in stale.json()["detail"]
    assert client.get(f"/api/v1/records/{rec.id}", headers=h).json()["output"] == "A"


def test_bulk_status_applies_to_whole_filter_not_a_page(client, db, setup):
    _, dataset, h = setup
    make_records(db, dataset, 30, nn_score=0.9)
    make_records(db, dataset, 5, nn_score=0.2)
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/records/bulk-status",
        json={"filter": {"min_nn_score": 0.8}, "status": "rejected", "reason": "near_dup"},
        headers=h,
    )
    assert resp.json() == {"updated": 30}
    stats = client.get(f"/api/v1/datasets/{dataset.id}/stats", headers=h).json()
    assert stats["counts"] == {"rejected": 30, "pending": 5}


def test_invalid_cursor_and_bad_types_are_422_with_field(client, db, setup):
    _, dataset, h = setup
    bad = client.get(f"/api/v1/datasets/{dataset.id}/records", params={"cursor": "!!!"}, headers=h)
    assert bad.status_code == 422 and bad.json()["field"] == "cursor"
    bad = client.get(f"/api/v1/datasets/{dataset.id}/records", params={"status": "maybe"}, headers=h)
    assert bad.status_code == 422 and "status" in bad.json()["detail"]
    rec = make_records(db, dataset, 1)[0]
    bad = client.patch(f"/api/v1/records/{rec.id}", json={"version": 1, "rating": 9}, headers=h)
    assert bad.status_code == 422 and "rating" in bad.json()["detail"]

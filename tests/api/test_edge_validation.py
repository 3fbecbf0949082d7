"""No input, however malformed, gives a 5xx: the cases an audit found, each a 4xx that names the field
(or line), with nothing written. On both databases."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit.models import AuditLog
from app.projects.models import Project
from app.records.models import Record
from tests.factories import make_dataset, make_project, make_records, make_user, token_for

HUGE = 99999999999999999999  # beyond 64 bits
HUGE_S = str(HUGE)


@pytest.fixture
def world(db: Session) -> dict[str, Any]:
    admin = make_user(db, "admin")
    project = make_project(db, (admin, "curator"), name="edge")
    dataset = make_dataset(db, project)
    records = make_records(db, dataset, 2)
    return {
        "h": token_for(db, admin),
        "p": project.id,
        "d": dataset.id,
        "r": records[0].id,
        "v": records[0].version,
    }


def _cursor(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


GETS = [
    ("/api/v1/records/" + HUGE_S, "record_id"),
    ("/api/v1/datasets/" + HUGE_S + "/stats", "dataset_id"),
    ("/api/v1/datasets/{d}/records?job_id=9223372036854775808", "job_id"),
    ("/api/v1/datasets/{d}/records?q=a%00b", "q"),
    ("/api/v1/datasets/{d}/records?tag=a%00b", "tag"),
    ("/api/v1/datasets/{d}/records?source=a%00b", "source"),
    ("/api/v1/jobs?status=a%00b", "status"),
    ("/api/v1/datasets/{d}/records?cursor=" + _cursor('{"a": 1e400, "d": false}'), "cursor"),
    ("/api/v1/datasets/{d}/records?cursor=" + _cursor('{"a": ' + HUGE_S + ', "d": false}'), "cursor"),
]


@pytest.mark.parametrize(("url", "field"), GETS, ids=[u for u, _ in GETS])
def test_malformed_query_and_path_values_are_4xx_naming_the_field(client, world, backend, url: str, field):
    res = client.get(url.format(**world), headers=world["h"])
    assert 400 <= res.status_code < 500, res.text
    if field:
        assert field in res.text, res.text


WRITES = [
    ("PATCH", "/api/v1/projects/{p}", {"name": "a\u0000b"}, "name"),
    ("POST", "/api/v1/datasets/{d}/snapshots", {"name": "s\u0000"}, "name"),
    (
        "POST",
        "/api/v1/datasets/{d}/records/bulk-status",
        {"filter": {}, "status": "rejected", "reason": "x\u0000"},
        "reason",
    ),
    (
        "POST",
        "/api/v1/datasets/{d}/records/bulk-status",
        {"filter": {"ids": [HUGE]}, "status": "rejected"},
        "ids",
    ),
    ("PATCH", "/api/v1/records/{r}", {"version": 1, "tags": ["a\u0000"]}, "tags"),
    ("PATCH", "/api/v1/records/{r}", {"version": 1, "label": "a\u0000"}, "label"),
    ("PATCH", "/api/v1/records/{r}", {"version": 1, "instruction": "a\ud800b"}, "instruction"),
    (
        "POST",
        "/api/v1/review/records/{r}/edit",
        {"version": 1, "instruction": "a\ud800b", "input": "", "output": "o"},
        "instruction",
    ),
    ("PUT", "/api/v1/projects/{p}/members", {"user_id": 1e20, "role": "annotator"}, "user_id"),
    ("DELETE", "/api/v1/projects/{p}/members/122133789744784179200", None, "user_id"),
]


@pytest.mark.parametrize(
    ("method", "url", "body", "field"), WRITES, ids=[f"{m} {u} {f}" for m, u, _, f in WRITES]
)
def test_malformed_bodies_are_4xx_naming_the_field_and_write_nothing(
    client, db: Session, world, backend, method: str, url: str, body, field: str
):
    def snapshot() -> tuple[Any, ...]:
        db.expire_all()
        return (
            db.scalar(select(Project.name).where(Project.id == world["p"])),
            db.scalar(select(func.count()).select_from(AuditLog)),
            tuple(db.execute(select(Record.status, Record.instruction, Record.tags, Record.label)).all()),
        )

    before = snapshot()
    # The raw text, so that a lone surrogate is sent as the JSON escape a client would send.
    content = None if body is None else json.dumps(body, ensure_ascii=True)
    res = client.request(
        method,
        url.format(**world),
        content=content,
        headers={**world["h"], "content-type": "application/json"},
    )
    assert 400 <= res.status_code < 500, res.text
    assert field in res.text, res.text
    assert snapshot() == before


def test_a_nul_in_the_login_username_is_4xx(client, backend):
    res = client.post("/api/v1/auth/login", json={"username": "a\u0000", "password": "x"})
    assert 400 <= res.status_code < 500, res.text


def test_an_import_line_with_nul_in_an_unknown_key_is_refused_naming_the_line(
    client, db: Session, world, backend
):
    lines = [
        json.dumps({"instruction": "fine", "output": "ok"}),
        json.dumps({"instruction": "i", "output": "o", "extra\u0000key": "v"}),
        json.dumps({"instruction": "i", "output": "o", "note": "v\u0000"}),
    ]
    res = client.post(
        f"/api/v1/datasets/{world['d']}/import",
        files={"file": ("x.jsonl", "\n".join(lines).encode(), "application/jsonl")},
        headers=world["h"],
    )
    assert 400 <= res.status_code < 500, res.text
    assert "line 2" in res.text, res.text
    db.expire_all()
    assert db.scalar(select(func.count()).where(Record.dataset_id == world["d"])) == 2  # the two made above


def test_paired_surrogates_and_big_but_valid_numbers_still_pass(client, db: Session, world, backend):
    res = client.patch(
        f"/api/v1/records/{world['r']}",
        content=json.dumps({"version": world["v"], "instruction": "smile \U0001f600"}, ensure_ascii=True),
        headers={**world["h"], "content-type": "application/json"},
    )
    assert res.status_code == 200, res.text
    assert res.json()["instruction"] == "smile \U0001f600"


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("dedup", {"threshold": 7}, "params.threshold"),
        ("dedup", {"scope": {"status": ["nonsense"]}}, "params.scope.status.0"),
        ("judge", {"teacher": "t", "threshold": "high"}, "params.threshold"),
    ],
)
def test_a_job_with_a_wrong_parameter_is_422_with_that_field_named_in_field(
    client, db: Session, world, backend, kind: str, params: dict[str, Any], field: str
):
    from app.jobs.models import Job

    res = client.post(
        "/api/v1/jobs", json={"kind": kind, "dataset_id": world["d"], "params": params}, headers=world["h"]
    )
    assert res.status_code == 422, res.text
    assert res.json()["field"] == field, res.text
    assert db.scalar(select(func.count()).select_from(Job)) == 0

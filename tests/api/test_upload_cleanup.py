"""Issue 16 §5 and §4: a failed import or a broken upload leaves no file in uploads/, and imports and uploads
are in the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.models import AuditLog
from app.imports import service as imports
from app.jobs import service as jobs
from app.jobs.models import Job
from tests.factories import make_dataset, make_project, make_user, token_for
from workers.runner import run_job

GOOD = '{"instruction": "a", "output": "b"}\n'
BAD = '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n'


def uploads() -> set[Path]:
    return set(imports.uploads_dir().iterdir())


@pytest.fixture
def ds(db):
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    return make_dataset(db, project), token_for(db, curator), curator, project


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            b"--xyz\r\nContent-Type: text/plain\r\n\r\nhello\r\n--xyz--\r\n",
            "multipart/form-data; boundary=xyz",
        ),
        (b"garbage", "multipart/form-data"),
        (
            b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nhello\r\n--xyz--\r\n',
            "multipart/form-data; boundary=xyz",
        ),
    ],
    ids=["part-without-a-name", "no-boundary", "no-file-field"],
)
def test_a_broken_multipart_upload_leaves_no_file(client, db, ds, body, content_type):
    dataset, h, _, _ = ds
    before = uploads()
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/import", content=body, headers={**h, "content-type": content_type}
    )
    assert 400 <= resp.status_code < 500, resp.text
    assert uploads() == before
    assert (
        client.post("/api/v1/uploads", content=body, headers={**h, "content-type": content_type}).status_code
        < 500
    )
    assert uploads() == before


def test_a_refused_inline_import_leaves_no_file(client, db, ds):
    dataset, h, _, _ = ds
    before = uploads()
    resp = client.post(f"/api/v1/datasets/{dataset.id}/import", content=BAD.encode(), headers=h)
    assert resp.status_code == 422
    assert uploads() == before


def test_inline_imports_and_uploads_are_in_the_audit_log(client, db, ds):
    dataset, h, curator, project = ds
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/import", files={"file": ("seed.jsonl", GOOD.encode())}, headers=h
    )
    assert resp.status_code == 201, resp.text
    [entry] = db.scalars(select(AuditLog).where(AuditLog.action == "import.inline")).all()
    assert entry.user_id == curator.id and entry.project_id == project.id
    assert entry.detail["imported"] == 1 and entry.detail["filename"] == "seed.jsonl"
    stored = client.post("/api/v1/uploads", files={"file": ("table.csv", b"a,b\n1,2\n")}, headers=h)
    assert stored.status_code == 201
    [upload] = db.scalars(select(AuditLog).where(AuditLog.action == "upload.create")).all()
    assert upload.entity_id == stored.json()["upload"] and upload.user_id == curator.id
    (imports.uploads_dir() / stored.json()["upload"]).unlink()


def _import_job(engine, text: str) -> tuple[int, Path, int]:
    """An import job over a stored upload, as POST /datasets/{id}/import queues one: (job, upload, user)."""
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        upload = imports.new_upload_path(".jsonl")
        upload.write_text(text)
        job = jobs.create_job(
            db=db,
            user=curator,
            kind="import",
            project_id=None,
            dataset_id=dataset.id,
            params={"upload": upload.name, "format": "alpaca"},
            enqueue=False,
        )
        db.commit()
        return job.id, upload, curator.id


def test_an_import_job_refused_for_its_content_deletes_its_upload(committed):
    job_id, upload, _ = _import_job(committed, BAD)
    assert run_job(job_id) == "failed"
    assert not upload.exists()


def test_a_cancelled_import_job_deletes_its_upload(committed, monkeypatch):
    job_id, upload, _ = _import_job(committed, GOOD * 10)

    def parse_then_cancel(path, **kw):  # the cancel arrives while the file is being read
        with Session(committed) as db:
            db.get_one(Job, job_id).cancel_requested = True
            db.commit()
        return parse_file(path, **kw)

    parse_file = imports.parse_file
    monkeypatch.setattr(imports, "parse_file", parse_then_cancel)
    assert run_job(job_id) == "cancelled"
    assert not upload.exists()


def test_an_import_job_that_fails_for_another_reason_keeps_its_upload_to_resume(committed, monkeypatch):
    job_id, upload, _ = _import_job(committed, GOOD)

    def database_gone(*args, **kw):
        raise ConnectionError("the database went away")

    monkeypatch.setattr(imports, "write_records", database_gone)
    assert run_job(job_id) == "failed"
    assert upload.exists()
    upload.unlink()


def test_an_import_job_is_in_the_audit_log_when_it_is_done(committed):
    job_id, upload, user_id = _import_job(committed, GOOD * 3)
    assert run_job(job_id) == "succeeded"
    assert not upload.exists()
    with Session(committed) as db:
        [entry] = db.scalars(select(AuditLog).where(AuditLog.action == "import.job")).all()
        assert entry.user_id == user_id and entry.project_id is not None
        assert entry.detail["job_id"] == job_id and entry.detail["imported"] == 3

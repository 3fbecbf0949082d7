"""Instruction backtranslation end to end: documents imported as passages over the API, the backtranslate
job against the fake teacher (real openai client over HTTP), cancel and a second job without repaid
calls, and a person's decisions left standing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.generation.models import LlmCall
from app.imports.documents import DocumentImportParams, import_documents
from app.jobs.models import Job
from app.records.models import Record
from app.records.schemas import RecordUpdate
from app.records.service import update_record
from tests.factories import create_job, job_row, make_dataset, make_project, make_user, token_for
from workers.runner import run_job


def answers(shared_data: Path, n: int) -> list[str]:
    rows = json.loads((shared_data / "alpaca_eval" / "gpt4_1106_preview.model_outputs.json").read_text())
    return sorted((r["output"] for r in rows), key=len, reverse=True)[:n]


def belle(shared_data: Path, n: int) -> list[str]:
    with (shared_data / "belle" / "dev1K.json").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return sorted((r["output"] for r in rows), key=len, reverse=True)[:n]


def passages_dataset(
    engine: Engine, tmp_path: Path, texts: list[str], language: str = "en"
) -> tuple[int, Any]:
    """A curator's dataset holding the passages of a JSONL of documents, committed."""
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"doc{i}", "text": t}) for i, t in enumerate(texts)))
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")), language=language)
        import_documents(
            db=db,
            user=curator,
            dataset_id=dataset.id,
            path=path,
            filename="docs.jsonl",
            params=DocumentImportParams(max_chars=1200),
            max_field_chars=1_000_000,
        )
        db.commit()
        db.expunge(curator)
        return dataset.id, curator


def records_of(engine: Engine, dataset_id: int, **where: Any) -> list[Record]:
    with Session(engine) as db:
        query = select(Record).where(Record.dataset_id == dataset_id).order_by(Record.id)
        for k, v in where.items():
            query = query.where(getattr(Record, k) == v)
        rows = list(db.scalars(query))
        db.expunge_all()
        return rows


def test_documents_import_as_passages_with_offsets_over_the_api(client, db, shared_data):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    doc = "\n\n".join(answers(shared_data, 5))
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/documents",
        files={"file": ("answers.md", doc.encode(), "text/markdown")},
        data={"max_chars": "500"},
        headers=token_for(db, curator),
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    rows = db.scalars(select(Record).where(Record.dataset_id == dataset.id).order_by(Record.id)).all()
    assert body["documents"] == 1 and body["passages"] == len(rows) > 5 and body["format"] == "text"
    for i, r in enumerate(rows):
        assert r.source == "document" and r.instruction == ""
        assert (r.status, r.reason) == ("filtered", "document_passage")  # source text, not training data
        assert r.meta["document"] == "answers.md" and r.meta["passage_index"] == i
        assert doc[r.meta["char_start"] : r.meta["char_end"]] == r.output and len(r.output) <= 500


def test_bad_documents_get_a_4xx_naming_the_line_and_nothing_is_written(client, db, shared_data):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    good = [json.dumps({"text": t}) for t in answers(shared_data, 3)]
    lines = [*good, json.dumps({"body": "no text field"}), *good]
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/documents",
        files={"file": ("docs.jsonl", "\n".join(lines).encode(), "application/jsonl")},
        headers=token_for(db, curator),
    )
    assert resp.status_code == 422 and 'line 4: field "text": missing' in resp.json()["detail"], resp.text
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/documents",
        files={"file": ("docs.jsonl", "\n".join(lines).encode(), "application/jsonl")},
        data={"text_field": "body", "max_chars": "5"},
        headers=token_for(db, curator),
    )
    assert resp.status_code == 422 and "max_chars" in resp.json()["detail"]
    assert db.scalar(select(func.count()).where(Record.dataset_id == dataset.id)) == 0


def test_job_keeps_high_scoring_pairs_and_filters_low_ones_with_the_reason(
    committed_pg, shared_data, tmp_path, teacher
):
    dataset_id, curator = passages_dataset(committed_pg, tmp_path, answers(shared_data, 12))
    passages = {r.id: r for r in records_of(committed_pg, dataset_id, source="document")}
    job_id = create_job(
        committed_pg, curator, dataset_id, "backtranslate", {"teacher": "fake", "batch_size": 8}
    )
    assert run_job(job_id) == "succeeded", job_row(committed_pg, job_id).error
    job = job_row(committed_pg, job_id)
    rows = records_of(committed_pg, dataset_id, job_id=job_id)
    assert len(rows) == len(passages) == job.result["passages"]
    kept = [r for r in rows if r.status == "pending"]
    filtered = [r for r in rows if r.status == "filtered"]
    assert kept and filtered and len(kept) == job.result["kept"]
    for r in rows:
        assert r.source == "backtranslation" and r.parent_id in passages
        assert r.output == passages[r.parent_id].output and r.teacher_model == "fake-model"
        assert r.meta["document"] == passages[r.parent_id].meta["document"]
    for r in kept:
        assert r.instruction and r.judge_score is not None and r.judge_score >= 4
        assert r.meta["backtranslation"]["score"] == r.judge_score and r.meta["backtranslation"]["rationale"]
    low = [r for r in filtered if r.reason == "backtranslation_score"]
    assert low and all(r.judge_score is not None and r.judge_score < 4 for r in low)
    assert {r.reason for r in filtered} <= {
        "backtranslation_score",
        "backtranslation_no_instruction",
        "backtranslation_unscored",
    }
    # The passages themselves are untouched.
    assert {(r.status, r.reason) for r in records_of(committed_pg, dataset_id, source="document")} == {
        ("filtered", "document_passage")
    }


def test_chinese_passages_get_chinese_instructions(committed_pg, shared_data, tmp_path, teacher):
    dataset_id, curator = passages_dataset(committed_pg, tmp_path, belle(shared_data, 10), language="zh")
    job_id = create_job(committed_pg, curator, dataset_id, "backtranslate", {"teacher": "fake"})
    assert run_job(job_id) == "succeeded", job_row(committed_pg, job_id).error
    kept = records_of(committed_pg, dataset_id, job_id=job_id, status="pending")
    assert kept and all(any("\u4e00" <= c <= "\u9fff" for c in r.instruction) for r in kept)


def paid_keys(engine: Engine, job_id: int) -> set[str]:
    with Session(engine) as db:
        return set(db.scalars(select(LlmCall.key).where(LlmCall.job_id == job_id, LlmCall.cached.is_(False))))


def test_a_job_after_a_cancelled_one_pays_no_call_twice_and_writes_no_copies(
    committed_pg, shared_data, tmp_path, teacher
):
    dataset_id, curator = passages_dataset(committed_pg, tmp_path, answers(shared_data, 30))
    n = len(records_of(committed_pg, dataset_id, source="document"))
    teacher.set_latency(40)
    params = {"teacher": "fake", "batch_size": 4}
    first = create_job(committed_pg, curator, dataset_id, "backtranslate", params)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(run_job(first)))
    runner.start()
    deadline = time.monotonic() + 60
    while job_row(committed_pg, first).progress_done < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    with Session(committed_pg) as db:
        db.execute(update(Job).where(Job.id == first).values(cancel_requested=True))
        db.commit()
    runner.join(60)
    assert outcome == ["cancelled"]
    written = records_of(committed_pg, dataset_id, job_id=first)
    assert 4 <= len(written) < n
    teacher.set_latency(0)

    second = create_job(committed_pg, curator, dataset_id, "backtranslate", params)
    assert run_job(second) == "succeeded", job_row(committed_pg, second).error
    job = job_row(committed_pg, second)
    assert not paid_keys(committed_pg, first) & paid_keys(committed_pg, second), "a call paid twice"
    # The passages the first job did are skipped (no call at all); the others are asked for once.
    assert job.result["done_before"] == len(written) and job.result["passages"] == n - len(written)
    children = records_of(committed_pg, dataset_id, source="backtranslation")
    assert len(children) == n and len({r.parent_id for r in children}) == n


def test_a_persons_decision_on_a_record_stands_when_the_job_runs_again(
    committed_pg, shared_data, tmp_path, teacher
):
    dataset_id, curator = passages_dataset(committed_pg, tmp_path, answers(shared_data, 10))
    job_id = create_job(committed_pg, curator, dataset_id, "backtranslate", {"teacher": "fake"})
    assert run_job(job_id) == "succeeded"
    rows = records_of(committed_pg, dataset_id, job_id=job_id)
    kept = next(r for r in rows if r.status == "pending")
    low = next(r for r in rows if r.reason == "backtranslation_score")
    passage = records_of(committed_pg, dataset_id, source="document")[-1]
    with Session(committed_pg) as db:
        user = db.merge(curator)
        update_record(
            db=db, user=user, record_id=kept.id, change=RecordUpdate(version=kept.version, status="rejected")
        )
        update_record(
            db=db,
            user=user,
            record_id=low.id,
            change=RecordUpdate(
                version=low.version, status="accepted", instruction="A person's instruction."
            ),
        )
        update_record(
            db=db,
            user=user,
            record_id=passage.id,
            change=RecordUpdate(version=passage.version, status="rejected"),
        )
        db.commit()
    again = create_job(committed_pg, curator, dataset_id, "backtranslate", {"teacher": "fake"})
    assert run_job(again) == "succeeded", job_row(committed_pg, again).error
    with Session(committed_pg) as db:
        k, lo, p = (db.get(Record, i) for i in (kept.id, low.id, passage.id))
        assert k is not None and lo is not None and p is not None
        assert (
            k.status == "rejected" and lo.status == "accepted" and lo.instruction == "A person's instruction."
        )
        assert p.status == "rejected"
    job = job_row(committed_pg, again)
    # The rejected passage is out of the default scope; the others have their pairs already (skipped),
    # and the person's edited pair is not made again beside it.
    assert job.result["passages"] == 0 and job.result["done_before"] == len(rows) - 1
    assert records_of(committed_pg, dataset_id, job_id=again) == []


def test_backtranslating_again_on_purpose_answers_from_the_cache_and_adds_no_copies(
    committed_pg, shared_data, tmp_path, teacher
):
    dataset_id, curator = passages_dataset(committed_pg, tmp_path, answers(shared_data, 8))
    first = create_job(committed_pg, curator, dataset_id, "backtranslate", {"teacher": "fake"})
    assert run_job(first) == "succeeded"
    paid = teacher.stats()["completions"]
    again = create_job(
        committed_pg, curator, dataset_id, "backtranslate", {"teacher": "fake", "skip_done": False}
    )
    assert run_job(again) == "succeeded", job_row(committed_pg, again).error
    job = job_row(committed_pg, again)
    assert teacher.stats()["completions"] == paid and not paid_keys(committed_pg, again)
    assert job.result["copies_skipped"] == job.result["passages"] > 0
    assert records_of(committed_pg, dataset_id, job_id=again) == []


def test_the_job_form_renders_its_parameters_and_starts_the_job(client, db, shared_data, teacher):
    from app.jobs.models import Job
    from tests.ui.test_pages import login

    curator = make_user(db, "curator")
    ds = make_dataset(db, make_project(db, (curator, "curator")))
    token = login(client, curator)
    page = client.get(f"/ui/datasets/{ds.id}/jobs/new/backtranslate")
    assert page.status_code == 200, page.text
    for name in ("teacher", "threshold", "skip_done", "max_items", "budget_usd"):
        assert f'name="{name}"' in page.text, name
    form = {"csrf_token": token, "teacher": "fake", "threshold": "4.5", "skip_done": "on"}
    ok = client.post(f"/ui/datasets/{ds.id}/jobs/new/backtranslate", data=form, follow_redirects=False)
    assert ok.status_code == 303, ok.text
    job = db.query(Job).filter(Job.dataset_id == ds.id).one()
    assert job.kind == "backtranslate" and job.params["threshold"] == 4.5 and job.params["skip_done"] is True


def test_cost_estimate_sends_the_jobs_own_first_prompts_and_counts_two_calls_a_passage(
    client, db, shared_data, teacher, tmp_path
):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    path = tmp_path / "a.md"
    path.write_text("\n\n".join(answers(shared_data, 4)))
    result = import_documents(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        path=path,
        filename="a.md",
        params=DocumentImportParams(),
        max_field_chars=1_000_000,
    )
    body = {
        "dataset_id": dataset.id,
        "kind": "backtranslate",
        "params": {"teacher": "fake"},
        "sample_prompts": 3,
    }
    resp = client.post("/api/v1/generation/estimate", json=body, headers=token_for(db, curator))
    assert resp.status_code == 200, resp.text
    est = resp.json()
    assert est["sampled_calls"] == 3 and est["total_calls"] == 2 * result.passages
    assert teacher.stats()["completions"] == 3
    empty = make_dataset(db, make_project(db, (curator, "curator")))
    resp = client.post(
        "/api/v1/generation/estimate", json={**body, "dataset_id": empty.id}, headers=token_for(db, curator)
    )
    assert resp.status_code == 422 and "no passages" in resp.json()["detail"]

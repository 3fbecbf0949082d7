"""Rewrite and reasoning jobs on real data (Code Alpaca, GSM8K) against the fake teacher over HTTP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.imports.service import parse_file, write_records
from app.jobs import service as jobs
from app.records import service as records
from app.records.models import Record, RecordRevision
from app.records.schemas import RecordUpdate
from app.review import insights
from app.review import service as review
from tests.factories import create_job, job_row, make_dataset, make_project, make_user, run_job_now
from workers.runner import run_job


def _dataset(engine: Any, tmp_path: Path, rows: list[dict[str, Any]]) -> tuple[int, Any]:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        parsed, _, fmt = parse_file(path, fmt="alpaca", filename=None, skip_bad=False)
        write_records(
            sessions=[db],
            dataset_id=dataset.id,
            records=parsed,
            fmt=fmt,
            key_prefix="imp",
            job_id=None,
            batch_size=1000,
        )
        db.commit()
        db.expunge(curator)
        return dataset.id, curator


def _alpaca(shared_data: Path, n: int) -> list[dict[str, Any]]:
    rows = json.loads((shared_data / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    return [r for r in rows if r["output"].strip()][:n]


def _gsm8k(shared_data: Path, n: int) -> list[dict[str, Any]]:
    rows = json.loads((shared_data / "alpacadatacleaned" / "gsm_8k_train.json").read_text(encoding="utf-8"))
    return rows[:n]


def _records(engine: Any, dataset_id: int) -> list[Record]:
    with Session(engine) as db:
        rows = list(db.scalars(select(Record).where(Record.dataset_id == dataset_id).order_by(Record.id)))
        db.expunge_all()
        return rows


def _decide(engine: Any, user: Any, record_id: int, **change: Any) -> None:
    with Session(engine) as db:
        record = db.get(Record, record_id)
        assert record is not None
        records.update_record(
            db=db,
            user=db.merge(user),
            record_id=record_id,
            change=RecordUpdate(version=record.version, **change),
        )
        db.commit()


def test_rewrite_stores_revisions_with_provenance_and_leaves_human_decided_records_alone(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _alpaca(shared_data, 12))
    before = {r.id: r.output for r in _records(committed_pg, dataset_id)}
    accepted, edited = sorted(before)[:2]
    _decide(committed_pg, curator, accepted, status="accepted")
    _decide(committed_pg, curator, edited, output=before[edited] + "\n# edited by a person")

    job = run_job_now(committed_pg, curator, dataset_id, "rewrite", {"teacher": "fake", "preset": "format"})

    rows = {r.id: r for r in _records(committed_pg, dataset_id)}
    assert rows[accepted].output == before[accepted] and "rewrites" not in rows[accepted].meta
    assert rows[edited].output == before[edited] + "\n# edited by a person"
    rewritten = [r for r in rows.values() if r.meta.get("rewrites")]
    assert job.result["human_skipped"] == 2 and job.result["rewritten"] == len(rewritten) > 0
    # The fake teacher sometimes echoes the answer unchanged: that is no rewrite and nothing is stored.
    assert job.result["rewritten"] + job.result["unchanged"] == 10
    with Session(committed_pg) as db:
        for r in rewritten:
            (prov,) = r.meta["rewrites"]
            assert prov["teacher"] == "fake" and prov["model"] == "fake-model" and prov["job_id"] == job.id
            assert prov["preset"] == "format" and "format" in prov["goal"] and prov["version"] == r.version
            revs = db.scalars(
                select(RecordRevision)
                .where(RecordRevision.record_id == r.id)
                .order_by(RecordRevision.version)
            ).all()
            assert [v.output for v in revs] == [before[r.id], r.output]
            assert revs[1].edited_by is None and f"job {job.id}" in revs[1].note
            # Preambles and wrapping fences are the teacher's chatter, not the answer.
            assert not r.output.startswith(("Sure!", "```")) and r.output.startswith(before[r.id][:20])
        # The review page's timeline shows the rewrite as an edit of the output, with its provenance.
        (entry,) = [
            e for e in review.timeline(db=db, user=db.merge(curator), record_id=r.id) if e.kind == "edit"
        ]
        assert entry.by == f"teacher fake (fake-model), job {job.id}" and "rewrite by" in (entry.note or "")
        assert list(entry.changes) == ["output"]
        assert any(part.op == "insert" for part in entry.changes["output"])


def test_rewrite_with_override_human_keeps_the_persons_version_as_a_revision(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _alpaca(shared_data, 6))
    ids = [r.id for r in _records(committed_pg, dataset_id)]
    mine = ids[0]
    persons = "A person's answer, written carefully by hand."
    _decide(committed_pg, curator, mine, output=persons)
    run_job_now(
        committed_pg,
        curator,
        dataset_id,
        "rewrite",
        {"teacher": "fake", "preset": "custom", "instruction": "Add a summary.", "override_human": True},
    )
    with Session(committed_pg) as db:
        outputs = list(
            db.scalars(
                select(RecordRevision.output)
                .where(RecordRevision.record_id == mine)
                .order_by(RecordRevision.version)
            )
        )
        record = db.get(Record, mine)
        assert record is not None
    assert outputs[1] == persons and outputs[-1] == record.output != persons
    assert record.meta["rewrites"][0]["human_decided"] is True and record.human_decided


def test_a_rewrite_becomes_a_preference_pair_once_a_person_accepts_it(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _alpaca(shared_data, 10))
    before = {r.id: r.output for r in _records(committed_pg, dataset_id)}
    run_job_now(committed_pg, curator, dataset_id, "rewrite", {"teacher": "fake"})
    rewritten = [r for r in _records(committed_pg, dataset_id) if r.meta.get("rewrites")]
    assert len(rewritten) >= 2

    def export() -> list[dict[str, Any]]:
        with Session(committed_pg) as db:
            lines = list(insights.preference_jsonl(db=db, user=db.merge(curator), dataset_id=dataset_id))
        return [json.loads(line) for line in lines]

    assert export() == []  # unconfirmed machine rewrites are no preference data
    confirmed, rejected = rewritten[0], rewritten[1]
    _decide(committed_pg, curator, confirmed.id, status="accepted")
    _decide(committed_pg, curator, rejected.id, status="rejected")
    (pair,) = export()
    assert pair["record_id"] == confirmed.id
    assert pair["chosen"] == confirmed.output and pair["rejected"] == before[confirmed.id]
    assert pair["prompt"].startswith(confirmed.instruction)


def test_reasoning_keeps_only_matching_answers_with_counters_and_messy_finals(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _gsm8k(shared_data, 40))
    originals = {r.id: r for r in _records(committed_pg, dataset_id)}
    job = run_job_now(committed_pg, curator, dataset_id, "reasoning", {"teacher": "fake"})
    res = job.result
    traces = [r for r in _records(committed_pg, dataset_id) if r.source == "reasoning"]
    kept = [r for r in traces if r.status == "pending"]
    dropped = [r for r in traces if r.status == "filtered"]
    assert res["matched"] == len(kept) > 0 and res["mismatched"] > 0 and res["unparseable"] > 0
    assert res["matched"] + res["mismatched"] + res["unparseable"] == 40 == len(traces)
    assert res["match_rate"] == round(res["matched"] / 40, 4)
    assert {r.reason for r in dropped} == {"answer_mismatch", "answer_unparseable"}
    for r in traces:
        parent = originals[r.parent_id]
        check = r.meta["answer_check"]
        assert r.instruction == parent.instruction and r.teacher_model == "fake-model"
        assert check["status"] == {"pending": "matched"}.get(r.status, check["status"])
    # Messy finals ("The answer is $1,250.00.", "\\boxed{..}", "**Final answer:** 72 in total") still match.
    finals = [r.meta["answer_check"]["final"] for r in kept]
    assert any(f.startswith("$") for f in finals) and any("total" in f for f in finals)


def test_reasoning_rerun_after_cancel_makes_no_repeated_paid_calls(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _gsm8k(shared_data, 24))
    teacher.set_latency(150)
    params = {"teacher": "fake", "batch_size": 4}
    first = create_job(committed_pg, curator, dataset_id, "reasoning", params)
    worker = threading.Thread(target=run_job, args=(first,))
    worker.start()
    deadline = time.time() + 60
    while job_row(committed_pg, first).progress_done < 4 and time.time() < deadline:
        time.sleep(0.05)
    with Session(committed_pg) as db:
        jobs.cancel_job(db=db, user=db.merge(curator), job_id=first)
        db.commit()
    worker.join(60)
    assert job_row(committed_pg, first).status == "cancelled"
    paid_before = teacher.stats()["completions"]
    assert paid_before < 24
    teacher.set_latency(0)
    again = run_job_now(committed_pg, curator, dataset_id, "reasoning", params)
    assert teacher.stats()["completions"] == 24  # each question paid for once in all
    assert again.result["matched"] + again.result["mismatched"] + again.result["unparseable"] == 24
    traces = [r for r in _records(committed_pg, dataset_id) if r.source == "reasoning"]
    assert len(traces) == 24 and len({r.parent_id for r in traces}) == 24  # nothing written twice


def test_rewrite_rerun_after_cancel_pays_only_for_records_not_yet_rewritten(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _alpaca(shared_data, 16))
    teacher.set_latency(150)
    params = {"teacher": "fake", "batch_size": 4, "preset": "concise"}
    first = create_job(committed_pg, curator, dataset_id, "rewrite", params)
    worker = threading.Thread(target=run_job, args=(first,))
    worker.start()
    deadline = time.time() + 60
    while job_row(committed_pg, first).progress_done < 4 and time.time() < deadline:
        time.sleep(0.05)
    with Session(committed_pg) as db:
        jobs.cancel_job(db=db, user=db.merge(curator), job_id=first)
        db.commit()
    worker.join(60)
    assert job_row(committed_pg, first).status == "cancelled"
    paid = teacher.stats()["completions"]
    assert paid < 16
    teacher.set_latency(0)
    again = run_job_now(committed_pg, curator, dataset_id, "rewrite", params)
    assert teacher.stats()["completions"] == 16  # each record's rewrite paid for once in all
    assert again.result["already_rewritten"] > 0
    with Session(committed_pg) as db:
        for rid in db.scalars(select(Record.id).where(Record.dataset_id == dataset_id)):
            versions = db.scalars(select(RecordRevision.version).where(RecordRevision.record_id == rid)).all()
            assert len(versions) in (0, 2)  # rewritten once (original + rewrite) or not at all


def test_a_snapshots_dpo_export_leaves_out_rewrites_of_accepted_records_until_a_person_accepts_again(
    committed_pg, shared_data, teacher, tmp_path
):
    from app.errors import Invalid
    from app.records.schemas import RecordFilter
    from app.snapshots import service as snapshots

    dataset_id, curator = _dataset(committed_pg, tmp_path, _alpaca(shared_data, 8))
    before = {r.id: r.output for r in _records(committed_pg, dataset_id)}
    for rid in before:
        _decide(committed_pg, curator, rid, status="accepted")
    run_job_now(
        committed_pg,
        curator,
        dataset_id,
        "rewrite",
        {"teacher": "fake", "preset": "formal", "override_human": True},
    )
    rewritten = [r for r in _records(committed_pg, dataset_id) if r.meta.get("rewrites")]
    assert rewritten and all(r.status == "accepted" for r in rewritten)  # the person's status stands

    def dpo(name: str) -> list[dict[str, Any]]:
        with Session(committed_pg) as db:
            snap = snapshots.create_snapshot(
                db=db,
                user=db.merge(curator),
                dataset_id=dataset_id,
                name=name,
                description="",
                flt=RecordFilter(status=["accepted"]),
            )
            db.commit()
            try:
                return snapshots.export_records(db, snap, "dpo")
            except Invalid:
                return []

    assert dpo("before confirmation") == []
    confirmed = rewritten[0]
    _decide(committed_pg, curator, confirmed.id, status="accepted")
    _decide(committed_pg, curator, confirmed.id, tags=["checked"])  # a later tag bumps the version only
    (pair,) = dpo("after confirmation")
    assert pair["record_id"] == confirmed.id
    assert pair["output"] == confirmed.output and pair["rejected"] == before[confirmed.id]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_rewrite_and_reasoning_run_on_the_embedded_sqlite_default(committed, shared_data, teacher, tmp_path):
    dataset_id, curator = _dataset(committed, tmp_path, _gsm8k(shared_data, 8))
    rewrite = run_job_now(committed, curator, dataset_id, "rewrite", {"teacher": "fake", "preset": "concise"})
    reasoning = run_job_now(committed, curator, dataset_id, "reasoning", {"teacher": "fake"})
    rows = _records(committed, dataset_id)
    assert rewrite.result["rewritten"] == sum(bool(r.meta.get("rewrites")) for r in rows) > 0
    assert reasoning.result["matched"] + reasoning.result["mismatched"] + reasoning.result["unparseable"] == 8
    assert sum(r.source == "reasoning" for r in rows) == 8

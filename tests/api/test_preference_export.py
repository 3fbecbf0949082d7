"""Preference datasets through the API: import (candidates and verdicts with provenance, a bad line refused
whole), snapshots that freeze the pairs, and the DPO export in messages and plain form with the split."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from sqlalchemy import select

from app.preferences import service as preferences
from app.preferences.models import Candidate, PreferenceJudgment
from app.records.models import Record
from tests.factories import make_dataset, make_project, make_user, token_for


def _ds(db):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    return dataset, token_for(db, curator), curator


@pytest.fixture
def ds(db, backend):
    """On both databases: what imports, freezes or compares rows."""
    return _ds(db)


@pytest.fixture
def ds_pg(db):
    """PostgreSQL only: what reads back rows the tests above already write on both."""
    return _ds(db)


def jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def hh(question: str, good: str, bad: str, history: str = "") -> dict[str, str]:
    head = f"{history}\n\nHuman: {question}\n\nAssistant:"
    return {"chosen": f"{head} {good}", "rejected": f"{head} {bad}"}


def binarized(question: str, good: str, bad: str) -> dict[str, Any]:
    user = {"role": "user", "content": question}
    return {
        "prompt": question,
        "chosen": [user, {"role": "assistant", "content": good}],
        "rejected": [user, {"role": "assistant", "content": bad}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }


def _import(client, dataset, h, body: bytes) -> Any:
    return client.post(f"/api/v1/datasets/{dataset.id}/import", content=body, headers=h)


def _snapshot(client, dataset, h, name: str, accept: bool = True) -> int:
    if accept:
        client.post(
            f"/api/v1/datasets/{dataset.id}/records/bulk-status",
            json={"filter": {}, "status": "accepted"},
            headers=h,
        )
    snap = client.post(f"/api/v1/datasets/{dataset.id}/snapshots", json={"name": name}, headers=h)
    assert snap.status_code == 201, snap.text
    return int(snap.json()["id"])


def _rows(client, sid: int, h, **params: Any) -> list[dict[str, Any]]:
    resp = client.get(f"/api/v1/snapshots/{sid}/export", params=params, headers=h)
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.content.decode().splitlines()]


def test_hh_import_stores_both_answers_as_candidates_and_the_human_verdict_with_its_provenance(
    client, db, ds
):
    dataset, h, _ = ds
    body = jsonl(hh("Is the sky blue?", "Yes, on a clear day.", "No."), hh("Say hi.", "Hi!", "Go away."))
    resp = _import(client, dataset, h, body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "hh_rlhf" and resp.json()["imported"] == 2
    records = db.scalars(select(Record).where(Record.dataset_id == dataset.id).order_by(Record.id)).all()
    assert [r.source for r in records] == ["import:hh_rlhf"] * 2
    assert [r.output for r in records] == ["Yes, on a clear day.", "Hi!"]
    assert all("import_preference" not in (r.meta or {}) for r in records)
    cands = db.scalars(
        select(Candidate).where(Candidate.record_id == records[0].id).order_by(Candidate.id)
    ).all()
    assert [(c.content, c.source) for c in cands] == [("Yes, on a clear day.", "import"), ("No.", "import")]
    (verdict,) = db.scalars(select(PreferenceJudgment).where(PreferenceJudgment.record_id == records[0].id))
    assert (verdict.kind, verdict.source, verdict.choice) == ("pairwise", "import", "a")
    assert verdict.candidate_ids == [cands[0].id, cands[1].id]
    assert verdict.meta == {"format": "import:hh_rlhf", "by": "human"}
    # The live download (before any snapshot) has the imported pairs too.
    live = client.get(f"/api/v1/review/datasets/{dataset.id}/preference-pairs.jsonl", headers=h)
    assert live.status_code == 200, live.text
    rows = [json.loads(line) for line in live.text.splitlines()]
    assert [(r["prompt"], r["chosen"], r["rejected"], r["by"]) for r in rows] == [
        ("Is the sky blue?", "Yes, on a clear day.", "No.", "imported_people"),
        ("Say hi.", "Hi!", "Go away.", "imported_people"),
    ]


def test_ultrafeedback_import_keeps_the_models_aspect_ratings_and_the_ranking_by_gpt4(client, db, ds_pg):
    dataset, h, _ = ds_pg
    row = {
        "instruction": "Name a prime.",
        "completions": [
            {"model": "a-7b", "response": "4", "fine-grained_score": 1.5,
             "annotations": {"helpfulness": {"Rating": "1", "Rationale": "4 is not prime."}}},
            {"model": "b-13b", "response": "7", "fine-grained_score": 4.5},
        ],
    }  # fmt: skip
    assert _import(client, dataset, h, jsonl(row)).status_code == 201
    rec = db.scalar(select(Record).where(Record.dataset_id == dataset.id))
    assert rec is not None and rec.output == "7"
    cands = {c.model: c for c in db.scalars(select(Candidate).where(Candidate.record_id == rec.id))}
    judgments = {
        j.kind: j
        for j in db.scalars(select(PreferenceJudgment).where(PreferenceJudgment.record_id == rec.id))
    }
    assert judgments["ranking"].ranking == [[cands["b-13b"].id], [cands["a-7b"].id]]
    assert judgments["ranking"].judge_model == "gpt-4"
    assert judgments["ranking"].meta["by"] == "model"
    assert judgments["scores"].scores == {"helpfulness": 1}
    assert judgments["scores"].rationale == "helpfulness: 4 is not prime."


def test_a_malformed_preference_line_is_a_422_naming_it_and_nothing_is_written(client, db, ds):
    dataset, h, _ = ds
    body = jsonl(binarized("q", "a", "b"), {"prompt": "q", "chosen": "a", "rejected": {"text": "b"}})
    resp = _import(client, dataset, h, body)
    assert resp.status_code == 422
    assert 'line 2: field "rejected"' in resp.json()["detail"]
    assert db.scalar(select(Record.id).where(Record.dataset_id == dataset.id)) is None
    assert db.scalar(select(Candidate.id).where(Candidate.dataset_id == dataset.id)) is None


def test_a_snapshot_keeps_its_pairs_when_a_person_judges_later_and_exports_them_for_trl(client, db, ds):
    from trl import is_conversational, maybe_apply_chat_template

    from tests.api.test_exports import _chat_tokenizer

    dataset, h, curator = ds
    questions = [f"Question {i}?" for i in range(4)]
    body = jsonl(*(binarized(q, f"good {i}", f"bad {i}") for i, q in enumerate(questions)))
    assert _import(client, dataset, h, body).status_code == 201
    v1 = _snapshot(client, dataset, h, "v1")
    first = db.scalar(select(Record).where(Record.dataset_id == dataset.id).order_by(Record.id))
    assert first is not None
    a, b = preferences.list_candidates(db=db, record_id=first.id)
    # A person here prefers the imported "rejected" answer: it outranks the import from now on.
    preferences.record_pairwise(db=db, user=curator, record=first, a_id=a.id, b_id=b.id, choice="b")
    # A judge that disagrees later is stored beside, and changes no pair.
    preferences.record_machine_judgment(
        db=db, record=first, kind="pairwise", candidate_ids=[a.id, b.id], job_id=None,
        judge_model="judge-llm", gen_key="rank:1:pair", choice="a",
    )  # fmt: skip
    db.flush()

    plain = _rows(client, v1, h, format="dpo_plain")
    assert plain[0] == {"prompt": "Question 0?", "chosen": "good 0", "rejected": "bad 0"}
    assert [r["chosen"] for r in plain] == ["good 0", "good 1", "good 2", "good 3"]
    v2 = _snapshot(client, dataset, h, "v2", accept=False)
    assert _rows(client, v2, h, format="dpo_plain")[0] == {
        "prompt": "Question 0?",
        "chosen": "bad 0",
        "rejected": "good 0",
    }
    diff = client.get(f"/api/v1/snapshots/{v1}/diff/{v2}", headers=h).json()
    assert diff["changed"] == [first.id] and diff["unchanged"] == 3
    bundle = client.get(
        f"/api/v1/snapshots/{v2}/export", params={"format": "dpo_plain", "parquet": "true"}, headers=h
    )
    assert bundle.status_code == 200, bundle.text
    import pyarrow.parquet as pq

    with zipfile.ZipFile(io.BytesIO(bundle.content)) as zf:
        table = pq.read_table(io.BytesIO(zf.read("data/train.parquet"))).to_pylist()
    assert [(r["prompt"], r["chosen"], r["rejected"], r["system"]) for r in table][:2] == [
        ("Question 0?", "bad 0", "good 0", None),
        ("Question 1?", "good 1", "bad 1", None),
    ]
    assert table[0]["id"] == first.id

    raw = client.get(
        f"/api/v1/snapshots/{v1}/export", params={"format": "dpo", "val_fraction": 0.25, "seed": 3}, headers=h
    )
    assert raw.status_code == 200, raw.text
    with zipfile.ZipFile(io.BytesIO(raw.content)) as zf:
        parts = {n: [json.loads(x) for x in zf.read(n).decode().splitlines()] for n in zf.namelist()}
    assert sorted(parts) == ["train.jsonl", "validation.jsonl"]
    assert (len(parts["train.jsonl"]), len(parts["validation.jsonl"])) == (3, 1)
    rows = parts["train.jsonl"] + parts["validation.jsonl"]
    assert sorted(r["chosen"][0]["content"] for r in rows) == ["good 0", "good 1", "good 2", "good 3"]
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert is_conversational(row)
    rendered = maybe_apply_chat_template(rows[0], _chat_tokenizer())
    question = rows[0]["prompt"][0]["content"]
    assert rendered["prompt"] == f"<user>{question}</s><assistant>"
    assert rendered["chosen"] == f"{rows[0]['chosen'][0]['content']}</s>"


def test_plain_dpo_refuses_a_conversation_by_record_and_the_messages_form_carries_it(client, db, ds_pg):
    dataset, h, _ = ds_pg
    history = "\n\nHuman: Hello.\n\nAssistant: Hi, how can I help?"
    assert _import(client, dataset, h, jsonl(hh("What is 2+2?", "4", "5", history))).status_code == 201
    sid = _snapshot(client, dataset, h, "v1")
    rid = db.scalar(select(Record.id).where(Record.dataset_id == dataset.id))
    resp = client.get(f"/api/v1/snapshots/{sid}/export", params={"format": "dpo_plain"}, headers=h)
    assert resp.status_code == 422
    assert f"record {rid}" in resp.json()["detail"] and "messages form" in resp.json()["detail"]
    (row,) = _rows(client, sid, h, format="dpo")
    assert row == {
        "prompt": [
            {"role": "user", "content": "Hello."},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": "What is 2+2?"},
        ],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }


def test_an_import_job_stores_candidates_and_verdicts_once_even_when_run_again(committed_pg):
    from sqlalchemy.orm import Session

    from app.imports import service as imports
    from app.jobs import service as jobs
    from app.preferences import imports as preference_imports
    from workers.runner import run_job

    with Session(committed_pg) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        upload = imports.new_upload_path(".jsonl")
        upload.write_bytes(jsonl(*(hh(f"Question {i}?", f"good {i}", f"bad {i}") for i in range(3))))
        job = jobs.create_job(
            db=db,
            user=curator,
            kind="import",
            project_id=None,
            dataset_id=dataset.id,
            params={"upload": upload.name, "format": "auto"},
            enqueue=False,
        )
        db.commit()
        job_id, dataset_id = job.id, dataset.id
    assert run_job(job_id) == "succeeded"
    with Session(committed_pg) as db:
        # A redelivered job's second pass finds nothing left to do: no candidate or verdict twice.
        key = f"imp:j{job_id}"
        assert (
            preference_imports.materialize_batch(db, dataset_id=dataset_id, key_prefix=key, job_id=job_id)
            is not None
        )
        db.commit()
        cands = db.scalars(select(Candidate).where(Candidate.dataset_id == dataset_id)).all()
        verdicts = db.scalars(
            select(PreferenceJudgment).where(PreferenceJudgment.dataset_id == dataset_id)
        ).all()
        assert len(cands) == 6 and len(verdicts) == 3
        assert {c.job_id for c in cands} == {job_id} and {v.job_id for v in verdicts} == {job_id}
        assert sorted(c.content for c in cands) == sorted(
            [f"good {i}" for i in range(3)] + [f"bad {i}" for i in range(3)]
        )

"""Curation jobs run by the real job runner on PostgreSQL: statuses and reasons change, nothing is deleted."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.pipeline.rouge import greedy_filter
from app.records.models import Record
from tests.factories import make_dataset, make_project, make_user, run_job_now


def _dataset_with(engine, texts: list[tuple[str, str]], language: str = "en") -> tuple[int, object]:
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")), language=language)
        db.add_all(
            Record(dataset_id=dataset.id, instruction=i, output=o, source="import:alpaca") for i, o in texts
        )
        db.commit()
        return dataset.id, curator


def _t0_prompts(shared_data, n_files: int = 3) -> list[str]:
    files = sorted((shared_data / "self-instruct" / "t0_train_50k").glob("rotten_tomatoes_*.jsonl"))[:n_files]
    prompts = []
    for f in files:
        for line in f.read_text().splitlines()[:150]:
            prompts.append(json.loads(line)["prompt"])
    return prompts


def test_dedup_job_keeps_exactly_the_greedy_set_and_deletes_nothing(committed_pg, shared_data):
    prompts = _t0_prompts(shared_data)
    dataset_id, curator = _dataset_with(committed_pg, [(p, "answer") for p in prompts])
    job = run_job_now(committed_pg, curator, dataset_id, "dedup", {"threshold": 0.7, "exact": False})
    with Session(committed_pg) as db:
        rows = db.execute(
            select(
                Record.id,
                Record.instruction,
                Record.status,
                Record.reason,
                Record.nn_score,
                Record.nn_record_id,
            )
            .where(Record.dataset_id == dataset_id)
            .order_by(Record.id)
        ).all()
    assert len(rows) == len(prompts)  # nothing deleted
    expected = greedy_filter([], [(str(r.id), r.instruction) for r in rows], threshold=0.7)
    kept = {int(d.key) for d in expected if d.kept}
    assert {r.id for r in rows if r.status == "pending"} == kept
    assert 0 < len(kept) < len(rows)
    for r in rows:
        if r.status == "filtered":
            assert r.reason == "rouge_dup" and r.nn_score > 0.7 and r.nn_record_id in kept
    assert job.counters["kept"] == len(kept) and job.counters["rouge_dup"] == len(rows) - len(kept)
    assert job.progress_done == job.progress_total == len(rows)


def test_dedup_job_catches_chinese_near_copies(committed_pg, shared_data):
    data = json.loads((shared_data / "alpaca-chinese-dataset" / "zh-data-part-00.json").read_text())[:200]
    originals = [(d["instruction"], d["output"]) for d in data]
    copies = [(d["instruction"].rstrip("。？?") + "，请简要回答。", d["output"]) for d in data[:50]]
    dataset_id, curator = _dataset_with(committed_pg, originals + copies, language="zh")
    job = run_job_now(committed_pg, curator, dataset_id, "dedup", {})
    with Session(committed_pg) as db:
        filtered = db.scalar(
            select(func.count()).where(
                Record.dataset_id == dataset_id,
                Record.status == "filtered",
                Record.reason.in_(["rouge_dup", "exact_dup"]),
            )
        )
    assert filtered >= 50, job.counters
    assert job.counters["scanned"] == 250


def test_rules_job_records_rule_code_and_detail_and_funnel(committed_pg, shared_data):
    pytest.importorskip("app.pipeline.rules")
    texts = [
        ("Draw a picture of a cat sitting on a mat.", "I cannot draw."),
        ("Give three tips for staying healthy in winter.", "As an AI language model, I cannot give advice."),
        ("Summarize the following article in two sentences.", ""),
        (
            "Explain why the sky appears blue during the day.",
            "Sunlight is scattered by air molecules; blue "
            "light is scattered more because of its shorter wavelength.",
        ),
    ]
    dataset_id, curator = _dataset_with(committed_pg, texts)
    job = run_job_now(committed_pg, curator, dataset_id, "rules", {})
    with Session(committed_pg) as db:
        rows = db.scalars(select(Record).where(Record.dataset_id == dataset_id).order_by(Record.id)).all()
    assert [r.status for r in rows] == ["filtered", "filtered", "filtered", "pending"]
    assert all(r.reason and r.meta["rules"][0]["code"] == r.reason for r in rows[:3])
    assert all(r.meta["rules"][0]["detail"] for r in rows[:3])
    funnel = job.counters["funnel"]
    assert sum(funnel.values()) == 3


def test_convert_job_applies_seeded_templates_to_a_real_table(committed_pg, shared_data):
    from app.imports.service import new_upload_path

    src = shared_data / "self-instruct" / "t0_train_50k" / "ag_news_classify.jsonl"
    if not src.exists():
        src = sorted((shared_data / "self-instruct" / "t0_train_50k").glob("ag_news_*.jsonl"))[0]
    upload = new_upload_path(".jsonl")
    upload.write_bytes(src.read_bytes())
    dataset_id, curator = _dataset_with(committed_pg, [])
    templates = [
        {
            "name": "answer",
            "instruction": "Answer the prompt.",
            "input": "{prompt}",
            "output": "{completion}",
            "inverse_instruction": "Write a prompt that this completion answers.",
        },
        {
            "name": "respond",
            "instruction": "Respond to the following.",
            "input": "{prompt}",
            "output": "{completion}",
        },
    ]
    job = run_job_now(
        committed_pg,
        curator,
        dataset_id,
        "convert",
        {"upload": upload.name, "templates": templates, "seed": 3},
    )
    with Session(committed_pg) as db:
        rows = db.scalars(select(Record).where(Record.dataset_id == dataset_id).order_by(Record.id)).all()
    assert len(rows) == job.result["records"] == 200
    assert {r.source for r in rows} == {"convert:answer", "convert:respond"}
    assert all(r.meta["convert"]["row"] >= 0 for r in rows)


def test_mix_job_takes_quotas_from_sources_and_dedups_across_them(committed_pg, shared_data):
    data = json.loads((shared_data / "codealpaca" / "code_alpaca_2k.json").read_text())
    a = [(d["instruction"], d["output"]) for d in data[:300]]
    b = [(d["instruction"], d["output"]) for d in data[200:500]]  # 100 exact overlaps with a
    with Session(committed_pg) as db:
        curator = make_user(db, "curator")
        project = make_project(db, (curator, "curator"))
        ids = []
        for texts in (a, b, []):
            ds = make_dataset(db, project)
            db.add_all(Record(dataset_id=ds.id, instruction=i, output=o, status="accepted") for i, o in texts)
            ids.append(ds.id)
        db.commit()
    job = run_job_now(
        committed_pg,
        curator,
        ids[2],
        "mix",
        {
            "sources": [{"dataset_id": ids[0], "quota": 300}, {"dataset_id": ids[1], "quota": 300}],
            "seed": 1,
            "dedup_threshold": None,
        },
    )
    result = job.result
    with Session(committed_pg) as db:
        mixed = db.scalars(select(Record).where(Record.dataset_id == ids[2])).all()
    assert result["dropped"]["exact_duplicate"] >= 100
    assert len(mixed) == sum(result["kept"].values()) <= 500
    assert {r.source for r in mixed} == {f"mix:{ids[0]}", f"mix:{ids[1]}"}
    assert len({r.instruction for r in mixed}) == len(mixed)

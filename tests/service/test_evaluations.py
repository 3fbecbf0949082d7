"""Evaluations through the service and the real job runner: position swap, decontamination, a worker killed
mid-judging, the export round trip, and a tiny trained model against its base."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.config import get_settings
from app.evaluation import service as evaluations
from app.evaluation.models import Evaluation, EvaluationAnswer, EvaluationSystem, EvaluationVerdict
from app.evaluation.schemas import EvaluationCreate
from app.jobs.models import Job
from app.pipeline import pairwise as pw
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.training.models import TrainingRun
from tests.conftest import PG_URL
from tests.factories import job_row, make_dataset, make_project, make_records, make_user, token_for
from tests.procs import kill, service_env, start_worker
from workers.runner import run_job


def _mt_bench(engine: Engine, shared_data: Path) -> tuple[int, User]:
    dataset_id, curator, _ = _mt_bench_project(engine, shared_data)
    return dataset_id, curator


def _mt_bench_project(engine: Engine, shared_data: Path) -> tuple[int, User, int]:
    """A curator's project with MT-Bench's 80 first turns (with categories) imported as a dataset."""
    from app.imports.service import parse_file, write_records

    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")), name="mt-bench")
        parsed, _, fmt = parse_file(
            shared_data / "fastchat" / "mt_bench_question.jsonl",
            fmt="mt_bench",
            filename=None,
            skip_bad=False,
        )
        write_records(
            sessions=[db],
            dataset_id=dataset.id,
            records=parsed,
            fmt=fmt,
            key_prefix="mt",
            job_id=None,
            batch_size=1000,
        )
        db.commit()
        db.expunge(curator)
        return dataset.id, curator, dataset.project_id


def _create(engine: Engine, user: User, **body: Any) -> tuple[int, int]:
    with Session(engine) as db:
        ev = evaluations.create_evaluation(
            db=db, user=db.merge(user), body=EvaluationCreate.model_validate(body)
        )
        return ev.id, ev.job_id


TWO_TEACHERS = [
    {"kind": "teacher", "teacher": "fake", "name": "alpha"},
    {"kind": "teacher", "teacher": "fake", "name": "beta"},
]


def _results(engine: Engine, evaluation_id: int) -> dict[str, Any]:
    with Session(engine) as db:
        ev = db.get(Evaluation, evaluation_id)
        assert ev is not None
        return dict(ev.results)


def test_a_judge_that_always_prefers_the_first_answer_yields_only_ties(committed, teacher, shared_data):
    dataset_id, curator = _mt_bench(committed, shared_data)
    teacher.set_judge("first")
    evaluation_id, job_id = _create(
        committed, curator, dataset_id=dataset_id, systems=TWO_TEACHERS, judge_teacher="fake", max_prompts=12
    )
    assert run_job(job_id) == "succeeded", job_row(committed, job_id).error
    overall = next(
        r for r in _results(committed, evaluation_id)["pairwise"]["win_rates"] if r["category"] is None
    )
    assert (overall["n"], overall["ties"], overall["wins"], overall["losses"]) == (12, 12, 0, 0)
    assert overall["consistent"] == 0  # every tie comes from the two orders disagreeing
    assert overall["win_rate"] == 0.5
    job = job_row(committed, job_id)
    assert job.progress_done == job.progress_total and job.cost_usd > 0
    with Session(committed) as db:  # the page's side-by-side view
        user = db.merge(curator)
        ties = evaluations.comparisons(db=db, user=user, evaluation_id=evaluation_id, outcome="tie")
        assert len(ties) == 12 and all(set(row["answers"]) == {"alpha", "beta"} for row in ties)
        (verdict,) = ties[0]["verdicts"]
        assert (
            verdict["ab"]["choice"] == verdict["ba"]["choice"] == "A"
            and verdict["ab"]["rationale"] is not None
        )
        assert evaluations.comparisons(db=db, user=user, evaluation_id=evaluation_id, outcome="a") == []
        category = ties[0]["category"]
        in_category = evaluations.comparisons(
            db=db, user=user, evaluation_id=evaluation_id, category=category
        )
        assert in_category and all(row["category"] == category for row in in_category)


def test_export_round_trips_to_the_stored_results(committed, teacher, shared_data):
    dataset_id, curator = _mt_bench(committed, shared_data)
    evaluation_id, job_id = _create(
        committed,
        curator,
        dataset_id=dataset_id,
        systems=TWO_TEACHERS,
        judge_teacher="fake",
        max_prompts=10,
        scores=True,
    )
    assert run_job(job_id) == "succeeded", job_row(committed, job_id).error
    from app.main import create_app

    with Session(committed) as db:
        headers = token_for(db, db.merge(curator))
        db.commit()
    with TestClient(create_app()) as client:
        response = client.get(f"/api/v1/evaluations/{evaluation_id}/export.jsonl", headers=headers)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    kinds = Counter(line["type"] for line in lines)
    assert kinds == {"evaluation": 1, "system": 2, "prompt": 10, "answer": 20, "verdict": 10 + 20}
    answers: dict[str, dict[str, str]] = {}
    for line in lines:
        if line["type"] == "answer":
            answers.setdefault(line["prompt_id"], {})[line["system"]] = line["answer"]
    prompts = [
        pw.EvalPrompt(
            id=p["prompt_id"],
            text=p["text"],
            category=p["category"],
            reference=p["reference"],
            answers=answers[p["prompt_id"]],
        )
        for p in lines
        if p["type"] == "prompt"
    ]
    assert all(p.category for p in prompts)  # MT-Bench's categories came through the import
    verdicts = [
        pw.PairVerdict.model_validate(v["verdict"])
        for v in lines
        if v["type"] == "verdict" and v["kind"] == "pair"
    ]
    stored = lines[0]["results"]
    assert pw.summarise_pairwise(prompts, verdicts).model_dump(mode="json") == stored["pairwise"]
    scores = [pw.ScoreVerdict.model_validate(v["verdict"]) for v in lines if v.get("kind") == "score"]
    assert [s.model_dump(mode="json") for s in pw.summarise_scores(scores)] == stored["scores"]


def _finished_run(
    db: Session, curator: User, snapshot_id: int, project_id: int, tmp_path: Path
) -> TrainingRun:
    """A training run as a succeeded train job leaves it (an adapter folder, no validation split)."""
    job = Job(project_id=project_id, kind="train", queue="gpu", params={}, status="succeeded")
    db.add(job)
    db.flush()
    artifacts = tmp_path / f"run-{uuid.uuid4().hex[:6]}"
    (artifacts / "adapter").mkdir(parents=True)
    run = TrainingRun(
        project_id=project_id,
        snapshot_id=snapshot_id,
        job_id=job.id,
        base_model="tiny-llama",
        method="lora",
        config={"val_fraction": 0.0, "seed": 0},
        artifacts_dir=str(artifacts),
        created_by=curator.id,
    )
    db.add(run)
    db.flush()
    job.params = {"run_id": run.id}
    return run


def _snapshot_of(db: Session, curator: User, project_id: int, rows: list[tuple[str, str]]) -> int:
    from app.projects.models import Project

    project = db.get(Project, project_id)
    dataset = make_dataset(db, project)
    for i, (q, a) in enumerate(rows):
        make_records(db, dataset, 1, instruction=q, output=a, status="accepted", gen_key=f"d{i}")
    return snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        name="train",
        description="",
        flt=RecordFilter(status=["accepted"]),
    ).id


def _store_answers(engine: Engine, evaluation_id: int, system_name: str) -> None:
    """The run's answers, stored as a resumed job finds them (generation needs torch; judging does not)."""
    from app.evaluation.jobs import _freeze_prompts
    from app.jobs.context import JobContext

    with Session(engine) as db:
        ev = db.get(Evaluation, evaluation_id)
        assert ev is not None
        ctx = JobContext(
            job_id=ev.job_id,
            kind="evaluate",
            project_id=ev.project_id,
            dataset_id=None,
            params={},
            attempt=0,
            created_by=None,
        )
    _freeze_prompts(ctx, evaluation_id)
    with Session(engine) as db:
        system = db.scalar(
            select(EvaluationSystem).where(
                EvaluationSystem.evaluation_id == evaluation_id, EvaluationSystem.name == system_name
            )
        )
        assert system is not None
        from app.evaluation.models import EvaluationPrompt

        for p in db.scalars(select(EvaluationPrompt).where(EvaluationPrompt.evaluation_id == evaluation_id)):
            db.add(
                EvaluationAnswer(
                    evaluation_id=evaluation_id,
                    system_id=system.id,
                    prompt_id=p.prompt_id,
                    answer=f"I do not know ({p.prompt_id}).",
                    tokens=5,
                )
            )
        db.commit()


EVAL_EN = "Write a short story about a lighthouse keeper who discovers a message in a bottle washed ashore"
EVAL_ZH = "请写一首关于秋天落叶和远方故乡的现代诗，表达游子对家乡的思念之情，语言要优美"


@pytest.mark.parametrize("injected", [True, False], ids=["copies", "clean"])
def test_decontamination_lists_injected_copies_of_eval_prompts_in_english_and_chinese(
    committed, teacher, tmp_path, injected
):
    with Session(committed) as db:
        curator = make_user(db, "curator")
        project = make_project(db, (curator, "curator"))
        eval_set = make_dataset(db, project, name="eval")
        make_records(db, eval_set, 1, instruction=EVAL_EN, output="")
        make_records(db, eval_set, 1, instruction=EVAL_ZH, output="")
        make_records(db, eval_set, 1, instruction="Name three primary colours.", output="")
        training = [("Translate 'cat' into French.", "Chat."), ("What is two plus two?", "Four.")]
        if injected:
            training += [
                (f"Please {EVAL_EN.lower()}, in under 200 words.", "Once..."),
                (f"{EVAL_ZH}。", "秋天..."),
            ]
        snap_id = _snapshot_of(db, curator, project.id, training)
        run = _finished_run(db, curator, snap_id, project.id, tmp_path)
        db.commit()
        db.expunge(curator)
        eval_id, run_id = eval_set.id, run.id
    evaluation_id, job_id = _create(
        committed,
        curator,
        dataset_id=eval_id,
        systems=[{"kind": "run", "training_run_id": run_id}, {"kind": "teacher", "teacher": "fake"}],
        judge_teacher="fake",
    )
    _store_answers(committed, evaluation_id, f"run {run_id}")
    assert run_job(job_id) == "succeeded", job_row(committed, job_id).error
    results = _results(committed, evaluation_id)
    (snap,) = results["decontamination"]["snapshots"]
    assert snap["snapshot_id"] == snap_id and snap["systems"] == [f"run {run_id}"]
    if not injected:
        assert (snap["copies"], snap["prompts_leaked"], snap["leaks"]) == (0, 0, [])
        assert "pairwise_without_leaked" not in results
        return
    assert snap["records_scanned"] == 4 and snap["copies"] == 2 and snap["prompts_leaked"] == 2
    leaked = {leak["prompt"]: leak["copies"] for leak in snap["leaks"]}
    assert set(leaked) == {EVAL_EN, EVAL_ZH}
    assert all(c["method"] == "ngram" and c["record_id"] for copies in leaked.values() for c in copies)
    clean = next(r for r in results["pairwise_without_leaked"]["win_rates"] if r["category"] is None)
    assert clean["n"] == 1  # only "Name three primary colours." is left


# --- a real Celery worker killed mid-judging ----------------------------------------------------------------


def _env(redis_url: str, teachers: str) -> dict[str, str]:
    return service_env(
        database_url=PG_URL,
        broker_url=redis_url,
        data_dir=Path(os.environ["IF_DATA_DIR"]),
        IF_JOB_LEASE_SECONDS="3",
        IF_REAPER_INTERVAL_SECONDS="1",
        IF_BROKER_VISIBILITY_TIMEOUT="4",
        IF_TEACHERS=teachers,
    )


def _send(redis_url: str, job_id: int) -> None:
    app = Celery(broker=redis_url)
    app.send_task("workers.tasks.run_job_task", args=[job_id], queue="gpu")
    app.close()


def _verdicts(engine: Engine, evaluation_id: int) -> int:
    with Session(engine) as db:
        return int(
            db.scalar(select(func.count()).where(EvaluationVerdict.evaluation_id == evaluation_id)) or 0
        )


def _wait(engine: Engine, job_id: int, predicate: Any, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    job = job_row(engine, job_id)
    raise AssertionError(
        f"timed out waiting for {what}: {job.status} {job.progress_done}/{job.progress_total}"
    )


@pytest.mark.slow
def test_a_worker_killed_mid_judging_resumes_without_paying_again_beyond_one_window(
    committed_pg, teacher, redis_url, shared_data, tmp_path
):
    dataset_id, curator, project_id = _mt_bench_project(committed_pg, shared_data)
    with Session(committed_pg) as db:
        snap_id = _snapshot_of(db, db.merge(curator), project_id, [("What is two plus two?", "Four.")])
        run_id = _finished_run(db, db.merge(curator), snap_id, project_id, tmp_path).id
        db.commit()
    concurrency = 4
    n = 40
    # A run whose answers are stored (they differ from the teacher's, so no two judge requests are alike)
    # against a teacher answering now.
    evaluation_id, job_id = _create(
        committed_pg,
        curator,
        dataset_id=dataset_id,
        systems=[
            {"kind": "run", "training_run_id": run_id, "name": "run"},
            {"kind": "teacher", "teacher": "fake"},
        ],
        judge_teacher="fake",
        max_prompts=n,
        concurrency=concurrency,
    )
    _store_answers(committed_pg, evaluation_id, "run")
    teacher.set_latency(150)
    env = _env(redis_url, teacher.config)
    _send(redis_url, job_id)
    first = start_worker(env, tmp_path / "worker1.log", queues="gpu")
    try:
        _wait(
            committed_pg,
            job_id,
            lambda: _verdicts(committed_pg, evaluation_id) >= 8,
            120,
            "judging to be under way",
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        kill(first)
    judged_at_kill = _verdicts(committed_pg, evaluation_id)
    assert 8 <= judged_at_kill < n, "the kill must land in the middle of judging"
    second = start_worker(env, tmp_path / "worker2.log", queues="gpu")
    try:
        _wait(
            committed_pg,
            job_id,
            lambda: job_row(committed_pg, job_id).status in ("succeeded", "failed", "paused"),
            180,
            "the redelivered job to end",
        )
    finally:
        kill(second)
    job = job_row(committed_pg, job_id)
    assert job.status == "succeeded", job.error
    assert job.attempts >= 2
    assert _verdicts(committed_pg, evaluation_id) == n
    served = teacher.stats()["completed_by_hash"]
    repeated = sum(count - 1 for count in served.values() if count > 1)
    # Only requests in flight at the kill are paid twice: the gateway keeps at most `concurrency` in flight.
    assert repeated <= concurrency, repeated
    overall = next(
        r for r in _results(committed_pg, evaluation_id)["pairwise"]["win_rates"] if r["category"] is None
    )
    assert overall["n"] + overall["unparseable"] + overall["teacher_errors"] == n


# --- a tiny trained model against its base ------------------------------------------------------------------


@pytest.mark.slow
def test_a_model_trained_on_the_answers_beats_its_base_with_an_interval_above_one_half(
    committed, teacher, tmp_path, monkeypatch
):
    pytest.importorskip("torch")
    from app.training import service as training
    from tests.service.test_training_runs import _snapshot
    from tests.trainer.conftest import _save_model, _tokenizer

    models = tmp_path / "models"
    _save_model(models / "tiny-llama", _tokenizer(None))
    monkeypatch.setattr(get_settings(), "models_dir", models)
    with Session(committed) as db:
        curator, snap = _snapshot(db)
        db.commit()
        run = training.create_run(
            db=db,
            user=curator,
            snapshot_id=snap.id,
            base_model="tiny-llama",
            method="lora",
            hyperparameters={
                "max_steps": 60,
                "batch_size": 4,
                "grad_accum": 1,
                "lr": 3e-3,
                "logging_steps": 10,
                "eval_steps": 0,
                "val_fraction": 0.25,
                "sample_prompts": 0,
                "gradient_checkpointing": False,
                "max_seq_len": 128,
            },
        )
        train_job, run_id, snap_id = run.job_id, run.id, snap.id
        db.expunge(curator)
    assert run_job(train_job) == "succeeded", job_row(committed, train_job).error
    teacher.set_judge("reference")
    evaluation_id, job_id = _create(
        committed,
        curator,
        snapshot_id=snap_id,
        systems=[
            {"kind": "run", "training_run_id": run_id, "name": "trained"},
            {"kind": "base", "base_model": "tiny-llama", "name": "base"},
        ],
        judge_teacher="fake",
        generation={"max_new_tokens": 8, "batch_size": 4},
    )
    assert run_job(job_id) == "succeeded", job_row(committed, job_id).error
    results = _results(committed, evaluation_id)
    overall = next(r for r in results["pairwise"]["win_rates"] if r["category"] is None)
    assert overall["system_a"] == "trained" and overall["n"] == 12
    assert overall["ci_low"] > 0.5, overall
    # every eval prompt is in the training snapshot (4 questions, 3 records each): decontamination says so
    (snap,) = results["decontamination"]["snapshots"]
    assert (snap["copies"], snap["prompts_leaked"], len(snap["leaks"])) == (12, 12, 4)
    assert results["pairwise_without_leaked"]["win_rates"] == []
    # the run held out 3 of its 12 records: the trained system's loss and perplexity on them
    validation = results["validation"]["trained"]
    assert (
        validation["records"] == 3
        and validation["perplexity"] > 1
        and validation["training_run_id"] == run_id
    )


@pytest.mark.parametrize("val_fraction,seed", [(0.25, 0), (0.1, 7), (0.5, 3)])
def test_a_snapshots_validation_split_is_exactly_what_the_trainer_held_out(
    committed, teacher, tmp_path, val_fraction, seed
):
    pytest.importorskip("torch")
    from app.evaluation.jobs import _freeze_prompts
    from app.evaluation.models import EvaluationPrompt
    from app.jobs.context import JobContext
    from app.pipeline.formats import write_openai_jsonl
    from app.snapshots.service import iter_contents
    from tests.trainer.conftest import _save_model, _tokenizer
    from trainer.config import TrainConfig
    from trainer.run import prepare_data

    tokenizer = _tokenizer(None)
    model = _save_model(tmp_path / "tiny-llama", tokenizer)
    with Session(committed) as db:
        curator = make_user(db, "curator")
        project = make_project(db, (curator, "curator"))
        rows = [
            (f"Question number {i}?", f"Answer {i}." if i % 5 else "") for i in range(23)
        ]  # some untrainable
        snap_id = _snapshot_of(db, curator, project.id, rows)
        db.commit()
        records = list(iter_contents(db, snap_id))
        project_id = project.id
        db.expunge(curator)
    evaluation_id, job_id = _create(
        committed,
        curator,
        snapshot_id=snap_id,
        split="validation",
        val_fraction=val_fraction,
        seed=seed,
        systems=TWO_TEACHERS,
        judge_teacher="fake",
    )
    ctx = JobContext(
        job_id=job_id,
        kind="evaluate",
        project_id=project_id,
        dataset_id=None,
        params={},
        attempt=0,
        created_by=None,
    )
    _freeze_prompts(ctx, evaluation_id)
    with Session(committed) as db:
        frozen = [
            p.text
            for p in db.scalars(
                select(EvaluationPrompt)
                .where(EvaluationPrompt.evaluation_id == evaluation_id)
                .order_by(EvaluationPrompt.position)
            )
        ]
    data = tmp_path / "dataset.jsonl"  # what the train job exports for the trainer
    with data.open("w") as fh:
        write_openai_jsonl(records, fh)
    config = TrainConfig(
        base_model=str(model),
        dataset_path=str(data),
        output_dir=str(tmp_path / "out"),
        val_fraction=val_fraction,
        seed=seed,
        max_seq_len=128,
    )
    held = [
        next(m["content"] for m in conv if m["role"] == "user")
        for conv in prepare_data(config, tokenizer).val_conversations
    ]
    assert frozen == held and frozen


def test_a_generator_left_running_by_a_killed_worker_is_stopped_before_a_new_one_starts(tmp_path):
    import subprocess
    import sys

    from app.evaluation.jobs import PID_FILE, stop_previous

    def spawn(*args: str) -> subprocess.Popen[bytes]:
        code = "import time; time.sleep(60)"
        return subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True)

    orphan = spawn("trainer.answer", str(tmp_path / "answer_spec.json"))
    stranger = spawn("something", "else")
    try:
        (tmp_path / PID_FILE).write_text(str(stranger.pid))
        assert stop_previous(tmp_path, wait_s=0.2) is False  # a reused pid is never killed
        assert stranger.poll() is None
        (tmp_path / PID_FILE).write_text(str(orphan.pid))
        time.sleep(0.2)  # let the interpreter start, so its command line is there to read
        assert stop_previous(tmp_path, wait_s=0.2) is True
        assert orphan.wait(timeout=5) == -signal.SIGKILL
    finally:
        for proc in (orphan, stranger):
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_cancel_while_a_model_answers_stops_its_generator_and_keeps_the_answers_so_far(
    committed_pg, teacher, tmp_path, monkeypatch
):
    pytest.importorskip("torch")
    import threading

    from app.evaluation.jobs import PID_FILE
    from app.jobs import service as jobs
    from tests.trainer.conftest import _save_model, _tokenizer

    models = tmp_path / "models"
    _save_model(models / "tiny-llama", _tokenizer(None))
    monkeypatch.setattr(get_settings(), "models_dir", models)
    with Session(committed_pg) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        make_records(db, dataset, 300)
        db.commit()
        dataset_id = dataset.id
        db.expunge(curator)
    evaluation_id, job_id = _create(
        committed_pg,
        curator,
        dataset_id=dataset_id,
        systems=[{"kind": "base", "base_model": "tiny-llama"}, {"kind": "teacher", "teacher": "fake"}],
        judge_teacher="fake",
        generation={"max_new_tokens": 48, "batch_size": 2},
    )
    outcome: list[str | None] = []
    runner = threading.Thread(target=lambda: outcome.append(run_job(job_id)))
    runner.start()

    def answers() -> int:
        with Session(committed_pg) as db:
            return int(
                db.scalar(select(func.count()).where(EvaluationAnswer.evaluation_id == evaluation_id)) or 0
            )

    try:
        _wait(committed_pg, job_id, lambda: answers() > 0, 120, "the first answers")
    finally:
        with Session(committed_pg) as db:
            jobs.cancel_job(db=db, user=db.merge(curator), job_id=job_id)
            db.commit()
        runner.join(timeout=180)
    assert outcome == ["cancelled"]
    assert 0 < answers() < 300  # what was answered before the cancel is kept
    with Session(committed_pg) as db:
        system = db.scalar(
            select(EvaluationSystem).where(
                EvaluationSystem.evaluation_id == evaluation_id, EvaluationSystem.kind == "base"
            )
        )
        assert system is not None
    out = (
        Path(os.environ["IF_DATA_DIR"])
        / "evaluations"
        / f"evaluation-{evaluation_id}"
        / f"system-{system.id}"
    )
    pid = int((out / PID_FILE).read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]

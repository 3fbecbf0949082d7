"""Ablations: "train these snapshots the same way and compare" as one action.

`create_ablation` makes one training run per snapshot through app.training.service (one config for all) and
an evaluation of those runs (and the base model), whose job is stored **paused** and not sent: no worker
holds anything while the runs train. The `train` job calls `training_finished` when a run ends:

- a run that succeeded is added to the evaluation's `params.ablation.succeeded` (under a row lock, so two
  runs ending at once on two workers cannot both miss the other); when every run is there, the evaluation
  job is queued and sent;
- a run that failed or was cancelled fails the evaluation, saying which run (and snapshot) and why.

The evaluation job checks the runs again when it starts (`check_runs`): one that failed or was cancelled
fails it by name; one still training pauses it again (a person who resumes it early loses nothing).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.base import utcnow
from app.errors import Invalid, not_found_as, validation_message
from app.evaluation.models import Evaluation, EvaluationSystem
from app.evaluation.schemas import AblationCreate, AblationRead, EvaluationCreate, SystemSpec
from app.jobs import service as jobs
from app.jobs.models import Job, JobStatus
from app.training.models import TrainingRun

WAITING = "waiting for its training runs ({runs}); it starts when every one has succeeded"


def _check_training(db: Session, user: User, body: AblationCreate) -> int:
    """Everything the runs need, checked before any is created; returns the project."""
    from app.snapshots.service import require_snapshot
    from app.training import service as training
    from trainer.config import TrainConfig  # pydantic only

    if len(body.snapshot_ids) < 2 or len(set(body.snapshot_ids)) != len(body.snapshot_ids):
        raise Invalid("snapshot_ids: an ablation trains two or more distinct snapshots", field="snapshot_ids")
    projects = set()
    for i, snapshot_id in enumerate(body.snapshot_ids):
        with not_found_as(f"snapshot {snapshot_id}"):
            try:
                snap = require_snapshot(
                    db=db, user=user, snapshot_id=snapshot_id, min_role=Role.curator.value
                )
            except Invalid as exc:
                raise Invalid(f"snapshot_ids.{i}: {exc.message}", field=f"snapshot_ids.{i}") from None
        from app.datasets.models import Dataset

        dataset = db.get(Dataset, snap.dataset_id)
        assert dataset is not None
        projects.add(dataset.project_id)
    if len(projects) != 1:
        raise Invalid("snapshot_ids: the snapshots must belong to one project", field="snapshot_ids")
    try:
        model_path = training.resolve_base_model(body.base_model)
    except Invalid as exc:
        raise Invalid(f"base_model: {exc.message}", field="base_model") from None
    reserved = sorted(training.RESERVED & set(body.hyperparameters))
    if reserved:
        raise Invalid(f"hyperparameters may not set {', '.join(reserved)}", field="hyperparameters")
    try:
        TrainConfig.model_validate(
            {
                **body.hyperparameters,
                "base_model": str(model_path),
                "dataset_path": "-",
                "output_dir": "-",
                "method": body.method,
            }
        )
    except ValidationError as exc:
        raise Invalid(validation_message(exc.errors(), prefix="hyperparameters")) from exc
    return projects.pop()


def _evaluation_body(body: AblationCreate, run_ids: list[int]) -> EvaluationCreate:
    systems = [
        SystemSpec(kind="run", training_run_id=run_id, name=f"snapshot {snap} (run {run_id})")
        for snap, run_id in zip(body.snapshot_ids, run_ids, strict=True)
    ]
    if body.include_base:
        systems.append(SystemSpec(kind="base", base_model=body.base_model, name=f"base {body.base_model}"))
    return EvaluationCreate(
        name=body.name
        or f"ablation: snapshots {', '.join(map(str, body.snapshot_ids))} trained as {body.method}",
        dataset_id=body.dataset_id,
        snapshot_id=body.snapshot_id,
        split=body.split,
        max_prompts=body.max_prompts,
        systems=systems,
        judge_teacher=body.judge_teacher,
        rubric=body.rubric,
        scores=body.scores,
        budget_usd=body.budget_usd,
        generation=body.generation,
    )


def create_ablation(*, db: Session, user: User, body: AblationCreate) -> AblationRead:
    """Check everything, then queue one training run per snapshot and store their evaluation, paused until
    every run has succeeded (curators). A 4xx stores nothing."""
    from app.evaluation.service import _prompt_set, _teacher_names
    from app.training import service as training

    project_id = _check_training(db, user, body)
    probe = _evaluation_body(body, [0] * len(body.snapshot_ids))
    dataset, _ = _prompt_set(db, user, probe)
    if dataset.project_id != project_id:
        raise Invalid("the prompt set must belong to the snapshots' project", field="dataset_id")
    known = _teacher_names()
    if body.judge_teacher not in known:
        listed = ", ".join(sorted(known)) or "none configured (set IF_TEACHERS)"
        raise Invalid(
            f"judge_teacher: unknown teacher {body.judge_teacher!r}; known: {listed}", field="judge_teacher"
        )
    runs = [
        training.create_run(
            db=db,
            user=user,
            snapshot_id=snapshot_id,
            base_model=body.base_model,
            method=body.method,
            hyperparameters=dict(body.hyperparameters),
        )
        for snapshot_id in body.snapshot_ids
    ]
    run_ids = [r.id for r in runs]
    create = _evaluation_body(body, run_ids)
    job = jobs.create_job(
        db=db,
        user=user,
        kind="evaluate",
        project_id=project_id,
        dataset_id=None,
        params={"evaluation_id": 0},
        enqueue=False,
        internal=True,
    )
    job.status = JobStatus.paused.value
    job.error = WAITING.format(runs=", ".join(f"run {r}" for r in run_ids))
    params = create.model_dump(
        mode="json", exclude={"name", "dataset_id", "snapshot_id", "split", "systems", "judge_teacher"}
    )
    params["language"] = "zh" if dataset.language.startswith("zh") else "en"
    params["ablation"] = {"run_ids": run_ids, "snapshot_ids": body.snapshot_ids, "succeeded": []}
    evaluation = Evaluation(
        project_id=project_id,
        name=create.name,
        dataset_id=create.dataset_id,
        snapshot_id=create.snapshot_id,
        split=create.split,
        judge_teacher=create.judge_teacher,
        params=params,
        job_id=job.id,
        created_by=user.id,
    )
    db.add(evaluation)
    db.flush()
    for position, spec in enumerate(create.systems):
        db.add(
            EvaluationSystem(
                evaluation_id=evaluation.id,
                position=position,
                name=spec.name,
                kind=spec.kind,
                base_model=body.base_model,
                training_run_id=spec.training_run_id,
            )
        )
    job.params = {"evaluation_id": evaluation.id}
    audit.record(
        db=db,
        user_id=user.id,
        action="evaluation.ablation",
        entity_type="evaluation",
        entity_id=evaluation.id,
        project_id=project_id,
        detail={"snapshots": body.snapshot_ids, "runs": run_ids, "method": body.method},
    )
    db.commit()
    _catch_up(db, evaluation, job)
    return AblationRead(
        evaluation_id=evaluation.id, evaluation_job_id=job.id, training_run_ids=run_ids, status=job.status
    )


def _catch_up(db: Session, evaluation: Evaluation, job: Job) -> None:
    """The runs were sent before the evaluation was stored: one that already ended told nobody. Look once."""
    try:
        waiting = check_runs(db, evaluation)
    except Invalid as exc:
        job.status, job.error, job.finished_at = JobStatus.failed.value, exc.message, utcnow()
        db.commit()
        return
    if waiting is None:
        job.status, job.error = JobStatus.queued.value, None
        db.commit()
        jobs.send(db=db, job=job)


def _waiting_on(db: Session, run_id: int) -> list[Evaluation]:
    ids = db.scalars(
        select(EvaluationSystem.evaluation_id).where(EvaluationSystem.training_run_id == run_id)
    ).all()
    if not ids:
        return []
    rows = db.scalars(
        select(Evaluation).where(Evaluation.id.in_(ids)).order_by(Evaluation.id).with_for_update()
    ).all()
    return [e for e in rows if (e.params or {}).get("ablation")]


def training_finished(db: Session, run_id: int, outcome: str, error: str | None = None) -> list[int]:
    """Called by the `train` job as a run ends (`succeeded`, `failed` or `cancelled`): moves the ablations
    waiting on it on. Returns the evaluation jobs it queued (to send after the commit)."""
    queued: list[int] = []
    for evaluation in _waiting_on(db, run_id):
        job = db.get(Job, evaluation.job_id, with_for_update=True)
        if job is None or job.status != JobStatus.paused.value:
            continue  # running, done, or cancelled by a person: not ours to move
        ablation = dict(evaluation.params["ablation"])
        if outcome != JobStatus.succeeded.value:
            run = db.get(TrainingRun, run_id)
            snap = run.snapshot_id if run is not None else "?"
            job.status = JobStatus.failed.value
            job.error = f"training run {run_id} (snapshot {snap}) {outcome}" + (f": {error}" if error else "")
            job.finished_at = utcnow()
            continue
        done = sorted({*ablation.get("succeeded", []), run_id})
        ablation["succeeded"] = done
        evaluation.params = {**evaluation.params, "ablation": ablation}
        if set(done) >= set(ablation["run_ids"]):
            job.status, job.error, job.lease_until = JobStatus.queued.value, None, None
            queued.append(job.id)
    return queued


def check_runs(db: Session, evaluation: Evaluation) -> str | None:
    """Before an ablation's evaluation runs: Invalid naming a run that failed or was cancelled; a message
    (pause) while one is still training; None when every run has succeeded."""
    ablation: dict[str, Any] = (evaluation.params or {}).get("ablation") or {}
    waiting = []
    for run_id in ablation.get("run_ids", []):
        run = db.get(TrainingRun, run_id)
        job = db.get(Job, run.job_id) if run is not None else None
        status = job.status if job is not None else "deleted"
        if status == JobStatus.succeeded.value or run_id in ablation.get("succeeded", []):
            continue
        if status in (JobStatus.failed.value, JobStatus.cancelled.value, "deleted"):
            snap = run.snapshot_id if run is not None else "?"
            why = f": {job.error}" if job is not None and job.error else ""
            raise Invalid(f"training run {run_id} (snapshot {snap}) {status}{why}", field="systems")
        waiting.append(f"run {run_id}")
    return WAITING.format(runs=", ".join(waiting)) if waiting else None

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.db import session_scope
from app.deps import CurrentUser, SessionDep
from app.evaluation import ablations, service
from app.evaluation.models import Evaluation
from app.evaluation.schemas import (
    AblationCreate,
    AblationRead,
    EvaluationCreate,
    EvaluationDetail,
    EvaluationEstimate,
    EvaluationRead,
    LineageRead,
    SystemRead,
)
from app.jobs.models import Job

router = APIRouter(tags=["evaluations"])


def read(
    evaluation: Evaluation,
    job: Job | None,
    systems: list[SystemRead],
    cls: type[EvaluationRead] = EvaluationRead,
) -> EvaluationRead:
    """The evaluation with its job's status, progress, counters and cost (shared with the training router)."""
    out = cls.model_validate(evaluation)
    out.systems = systems
    if job is not None:
        out.status, out.error, out.counters = job.status, job.error, dict(job.counters or {})
        out.progress_done, out.progress_total, out.cost_usd = (
            job.progress_done,
            job.progress_total,
            job.cost_usd,
        )
    return out


def systems(db: SessionDep, evaluation_id: int) -> list[SystemRead]:
    return [SystemRead.model_validate(s) for s in service.systems_of(db=db, evaluation_id=evaluation_id)]


@router.post("/evaluations", response_model=EvaluationRead, status_code=202)
def create_evaluation(body: EvaluationCreate, user: CurrentUser, db: SessionDep) -> EvaluationRead:
    """Queue an evaluation (curators): systems answer the prompt set, the judge compares every pair."""
    evaluation = service.create_evaluation(db=db, user=user, body=body)
    job = service.job_of(db=db, evaluation=evaluation)
    return read(evaluation, job, systems(db, evaluation.id))


@router.post("/evaluations/estimate", response_model=EvaluationEstimate)
def estimate_evaluation(body: EvaluationCreate, user: CurrentUser, db: SessionDep) -> EvaluationEstimate:
    """What this evaluation would call and cost (the body of POST /evaluations); nothing is stored."""
    return service.estimate_evaluation(db=db, user=user, body=body)


@router.get("/evaluations", response_model=list[EvaluationRead])
def list_evaluations(
    user: CurrentUser, db: SessionDep, project_id: int | None = None
) -> list[EvaluationRead]:
    rows = service.list_evaluations(db=db, user=user, project_id=project_id)
    return [read(e, j, systems(db, e.id)) for e, j in rows]


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationDetail)
def get_evaluation(evaluation_id: int, user: CurrentUser, db: SessionDep) -> EvaluationRead:
    """The evaluation with its results (win rates with intervals, lengths, scores, validation, leaks)."""
    evaluation, job = service.get_evaluation(db=db, user=user, evaluation_id=evaluation_id)
    out = read(evaluation, job, systems(db, evaluation.id), EvaluationDetail)
    assert isinstance(out, EvaluationDetail)
    out.results = dict(evaluation.results or {})
    return out


@router.post("/evaluations/{evaluation_id}/cancel", response_model=EvaluationRead)
def cancel_evaluation(evaluation_id: int, user: CurrentUser, db: SessionDep) -> EvaluationRead:
    evaluation, job = service.cancel_evaluation(db=db, user=user, evaluation_id=evaluation_id)
    return read(evaluation, job, systems(db, evaluation.id))


@router.post("/evaluations/{evaluation_id}/resume", response_model=EvaluationRead)
def resume_evaluation(evaluation_id: int, user: CurrentUser, db: SessionDep) -> EvaluationRead:
    """Re-queue a paused or failed evaluation; stored answers and verdicts are not asked for again."""
    evaluation, job = service.resume_evaluation(db=db, user=user, evaluation_id=evaluation_id)
    return read(evaluation, job, systems(db, evaluation.id))


def _stream(evaluation_id: int) -> Iterator[str]:
    # Its own session: the request's closes when the handler returns, before the body is streamed.
    with session_scope() as db:
        yield from service.export_lines(db, evaluation_id)


@router.get("/evaluations/{evaluation_id}/export.jsonl", response_class=StreamingResponse)
def export_evaluation(evaluation_id: int, user: CurrentUser, db: SessionDep) -> StreamingResponse:
    """Every prompt, answer and verdict as JSON Lines (curators), streamed; see docs/evaluation.md."""
    evaluation = service.start_export(db=db, user=user, evaluation_id=evaluation_id)
    name = f"evaluation-{evaluation.id}.jsonl"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(_stream(evaluation.id), media_type="application/jsonl", headers=headers)


@router.get("/records/{record_id}/evaluations", response_model=list[LineageRead])
def record_evaluations(record_id: int, user: CurrentUser, db: SessionDep) -> list[LineageRead]:
    """A record's lineage: the snapshots holding it, the training runs on them and those runs' evaluations."""
    return service.record_lineage(db=db, user=user, record_id=record_id)


@router.post("/ablations", response_model=AblationRead, status_code=202)
def create_ablation(body: AblationCreate, user: CurrentUser, db: SessionDep) -> AblationRead:
    """Train these snapshots the same way and compare (curators): one run per snapshot, then their evaluation."""
    return ablations.create_ablation(db=db, user=user, body=body)

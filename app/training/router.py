from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.auth.models import Role
from app.deps import CurrentUser, SessionDep
from app.evaluation import router as evaluations
from app.evaluation import service as evaluation_service
from app.evaluation.schemas import EvaluateAgainstBase, EvaluationRead
from app.jobs import service as jobs
from app.jobs.models import Job
from app.training import bundle, service
from app.training.models import TrainingRun
from app.training.schemas import (
    ArtifactRead,
    BaseModelRead,
    MetricRead,
    SamplesRead,
    TrainingRunCreate,
    TrainingRunDetail,
    TrainingRunRead,
)

router = APIRouter(tags=["training"])


def _read(run: TrainingRun, job: Job | None, cls: type[TrainingRunRead] = TrainingRunRead) -> TrainingRunRead:
    out = cls.model_validate(run)
    out.continued_from = service.continued_from(run)
    if job is not None:
        out.status, out.error = job.status, job.error
        out.progress_done, out.progress_total = job.progress_done, job.progress_total
    return out


@router.post("/training-runs", response_model=TrainingRunRead, status_code=202)
def create_run(body: TrainingRunCreate, user: CurrentUser, db: SessionDep) -> TrainingRunRead:
    """Queue a training run on the `gpu` queue from a snapshot (records the snapshot, model, config, code)."""
    # every field of the body is a keyword of the service
    run = service.create_run(db=db, user=user, **body.model_dump())
    return _read(run, service.job_of(db=db, run=run))


@router.post("/training-runs/export", response_class=FileResponse)
def export_run(body: TrainingRunCreate, user: CurrentUser, db: SessionDep) -> FileResponse:
    """The run this body would start, as a launch bundle (.tar.gz: train_config.yaml, dataset.jsonl, launch.sh,
    README.txt) to start under Slurm or Kubernetes; nothing is queued. Checked as POST /training-runs, except that
    nodes > 1 and more GPUs than a worker has are allowed (docs/training.md, Several machines)."""
    target = bundle.build_bundle(db=db, user=user, body=body.model_dump())
    task = BackgroundTask(bundle.remove, target)
    return FileResponse(target, filename=target.name, media_type="application/gzip", background=task)


@router.get("/training-runs", response_model=list[TrainingRunRead])
def list_runs(user: CurrentUser, db: SessionDep, project_id: int | None = None) -> list[TrainingRunRead]:
    return [_read(r, j) for r, j in service.list_runs(db=db, user=user, project_id=project_id)]


@router.get("/training-runs/{run_id}", response_model=TrainingRunDetail)
def get_run(run_id: int, user: CurrentUser, db: SessionDep) -> TrainingRunRead:
    run = service.require_run(db=db, user=user, run_id=run_id)
    out = _read(run, service.job_of(db=db, run=run), TrainingRunDetail)
    assert isinstance(out, TrainingRunDetail)
    out.metrics = [MetricRead(step=m.step, values=m.values) for m in service.metrics(db=db, run_id=run.id)]
    return out


@router.post("/training-runs/{run_id}/cancel", response_model=TrainingRunRead)
def cancel_run(run_id: int, user: CurrentUser, db: SessionDep) -> TrainingRunRead:
    run = service.require_run(db=db, user=user, run_id=run_id, min_role=Role.curator.value)
    job = jobs.cancel_job(db=db, user=user, job_id=run.job_id)
    return _read(run, job)


@router.get("/training-runs/{run_id}/samples", response_model=SamplesRead)
def get_samples(run_id: int, user: CurrentUser, db: SessionDep) -> SamplesRead:
    """Generations for held-out prompts after training, by step, with the snapshot's reference answers.

    Curators and admins of the run's project (the prompts are snapshot data). `written` is false until the
    trainer has written samples.jsonl (when training ends)."""
    return service.read_samples(db=db, user=user, run_id=run_id)


@router.get("/base-models", response_model=list[BaseModelRead])
def list_base_models(user: CurrentUser) -> list[BaseModelRead]:
    """The models under IF_MODELS_DIR for `base_model`, each usable or with the reason it is refused."""
    return [BaseModelRead.model_validate(check.as_dict()) for check in service.base_models()]


@router.get("/training-runs/{run_id}/artifacts", response_model=list[ArtifactRead])
def list_artifacts(run_id: int, user: CurrentUser, db: SessionDep) -> list[ArtifactRead]:
    run = service.require_run(db=db, user=user, run_id=run_id)
    return [ArtifactRead(path=p, size=s) for p, s in service.list_artifacts(run)]


@router.get("/training-runs/{run_id}/artifacts/{path:path}", response_class=FileResponse)
def download_artifact(run_id: int, path: str, user: CurrentUser, db: SessionDep) -> FileResponse:
    """Metrics, summary and loss curve for project members; the data and weights for curators and admins."""
    target = service.download_artifact(db=db, user=user, run_id=run_id, path=path)
    return FileResponse(target, filename=target.name)


@router.post("/training-runs/{run_id}/evaluate-against-base", response_model=EvaluationRead, status_code=202)
def evaluate_against_base(
    run_id: int, body: EvaluateAgainstBase, user: CurrentUser, db: SessionDep
) -> EvaluationRead:
    """Queue an evaluation of the run against its base model on its snapshot's validation split."""
    evaluation = evaluation_service.evaluate_against_base(db=db, user=user, run_id=run_id, body=body)
    job = evaluation_service.job_of(db=db, evaluation=evaluation)
    return evaluations.read(evaluation, job, evaluations.systems(db, evaluation.id))

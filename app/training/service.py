"""Training runs: validate, queue on the `gpu` queue, expose metrics and artifacts. No torch here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from app.audit import service as audit
from app.auth.models import Role, User
from app.config import get_settings
from app.db import get_or_404
from app.errors import Invalid, NotFound, not_found_as, validation_message
from app.jobs import service as jobs
from app.jobs.models import Job, JobStatus
from app.projects.service import require_project
from app.snapshots.models import Snapshot
from app.snapshots.service import export_records, require_snapshot
from app.training import base_models as catalog
from app.training.models import TrainingMetric, TrainingRun
from app.training.schemas import MessageRead, SampleRead, SamplesRead
from trainer.contract import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    PROMPT_FORMAT_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    code_version,
)

if TYPE_CHECKING:
    from app.datasets.models import Dataset
    from trainer.config import TrainConfig

# What any member of the run's project may download: how the run went. Every other file holds the
# snapshot's data or what was learnt from it (dataset.jsonl, samples.jsonl with references, the trainer's
# log, adapter and merged weights) or server paths (configs, status), so it follows the export rule: curators
# and admins only, like GET /snapshots/{id}/export. An allow-list, so that a file the trainer adds later is
# protected until someone decides otherwise.
MEMBER_ARTIFACTS = frozenset({SUMMARY_FILE, METRICS_FILE, LOSS_CURVE_FILE, PROMPT_FORMAT_FILE})

# The trainer writes `sample_prompts` lines (5 by default); a file far longer was not written for a page.
MAX_SAMPLES = 500

# Fields the service decides; a caller's hyperparameters cannot point the trainer elsewhere.
RESERVED = {
    "base_model",
    "models_dir",
    "dataset_path",
    "output_dir",
    "method",
    "allow_hub_download",
    "gpus",  # the request's own fields, checked against the workers' GPUs
    "nodes",
    "init_adapter",  # a server path: set from continue_from, an earlier run of the project, never by a caller
}


def resolve_base_model(name: str) -> Path:
    """The model folder, which must lie inside IF_MODELS_DIR (no absolute paths elsewhere, no `..`)."""
    models_dir = get_settings().models_dir.resolve()
    candidate = (models_dir / name).resolve()
    if not candidate.is_relative_to(models_dir):
        raise Invalid(
            f"base_model must be a folder inside the models directory ({models_dir})", field="base_model"
        )
    if not (candidate / "config.json").is_file():
        raise Invalid(
            f"base_model {name!r} is not a Hugging Face model folder under {models_dir}", field="base_model"
        )
    check = catalog.check_model(models_dir, name)
    if not check.ok:
        raise Invalid(f"base_model {name!r} is refused: {check.reason}", field="base_model")
    return candidate


def check_gpus(*, gpus: int, nodes: int, launched: bool = True) -> None:
    """A run must fit one gpu worker: more GPUs than IF_GPUS_PER_WORKER, or several nodes, is refused here.
    A run exported to be launched elsewhere (launched=False: Slurm, Kubernetes) is not bound by the workers."""
    if not launched:
        return
    if nodes > 1:
        raise Invalid(
            "nodes: the service launches single-node runs; export a multi-node run (POST "
            "/training-runs/export) and start it under Slurm or Kubernetes (docs/training.md, Several machines)",
            field="nodes",
        )
    capacity = get_settings().worker_gpus
    if gpus > 1 and gpus > capacity:
        raise Invalid(
            f"gpus: {gpus} asked for, but a gpu worker here has {capacity} (IF_GPUS_PER_WORKER)", field="gpus"
        )


def require_pairs(*, db: Session, snapshot: Snapshot, objective: str) -> int:
    """The snapshot's preference pairs (what a preference run trains on) counted; none is a 422 naming
    snapshot_id, before anything is queued."""
    try:
        pairs = export_records(db, snapshot, "dpo")
    except Invalid as exc:
        raise Invalid(
            f"snapshot {snapshot.id} has no preference pairs for objective={objective}: {exc.message}",
            field="snapshot_id",
        ) from None
    return len(pairs)


def check_server_side_options(hyperparameters: dict[str, Any]) -> None:
    """Options that would reach past the run's own files: remote code only when an admin allows it, and a
    chat template as its text (a path would read a file of the server's)."""
    try:  # read as TrainConfig reads it: "true" and 1 are true too
        remote = TypeAdapter(bool).validate_python(hyperparameters.get("trust_remote_code", False))
    except ValidationError:
        remote = False  # TrainConfig refuses it below, naming the field
    if remote and not get_settings().allow_trust_remote_code:
        raise Invalid(
            "hyperparameters.trust_remote_code: running a model folder's own code is off on this server "
            "(an admin turns it on with IF_ALLOW_TRUST_REMOTE_CODE=true)",
            field="hyperparameters.trust_remote_code",
        )
    template = hyperparameters.get("chat_template")
    if isinstance(template, str) and "{" not in template:
        raise Invalid(
            "hyperparameters.chat_template: give the Jinja template's text; file paths are not read here",
            field="hyperparameters.chat_template",
        )


def continued_adapter(
    *, db: Session, run_id: int, project_id: int, base_model: str, method: str
) -> tuple[TrainingRun, Path]:
    """The adapter folder of the earlier run a new run continues (continue_from), or a 422 naming continue_from:
    another project's or a missing run, one that has not succeeded, has no adapter here, or was trained on
    another base model or with a method whose adapter the new method cannot train."""
    from trainer.config import ADAPTER_KINDS  # pydantic only: no torch in the web process

    def refuse(why: str) -> Invalid:
        return Invalid(f"continue_from: {why}", field="continue_from")

    earlier = db.get(TrainingRun, run_id)
    if earlier is None or earlier.project_id != project_id:
        raise refuse(f"no training run {run_id} in this project")
    job = db.get(Job, earlier.job_id)
    if job is None or job.status != JobStatus.succeeded.value:
        raise refuse(
            f"training run {run_id} is {job.status if job else 'gone'}; only a succeeded run has an adapter"
        )
    if earlier.base_model != base_model:
        raise refuse(
            f"training run {run_id} was trained on base_model {earlier.base_model!r}, not {base_model!r}: "
            "an adapter only fits the model it was trained on"
        )
    wanted, found = ADAPTER_KINDS.get(method), ADAPTER_KINDS.get(earlier.method)
    if found is None:
        raise refuse(
            f"training run {run_id} used method={earlier.method}, which leaves no adapter to continue"
        )
    if wanted != found:
        raise refuse(
            f"training run {run_id} trained a {earlier.method} adapter; method={method} cannot continue it"
            + (" (adalora's rank budget cannot restart)" if method == "adalora" else "")
        )
    adapter = Path(earlier.artifacts_dir) / ADAPTER_DIR
    if not adapter.is_dir():
        raise refuse(f"training run {run_id} has no adapter on this server")
    return earlier, adapter


def continued_from(run: TrainingRun) -> int | None:
    """The run whose adapter `run` continued: the run whose folder holds its init_adapter (its lineage)."""
    init = (run.config or {}).get("init_adapter")
    db = object_session(run)
    if not init or db is None:
        return None
    folder = str(Path(init).parent)
    return db.scalar(
        select(TrainingRun.id).where(
            TrainingRun.project_id == run.project_id, TrainingRun.artifacts_dir == folder
        )
    )


def base_models() -> list[catalog.ModelCheck]:
    """The models under IF_MODELS_DIR, each checked as create_run checks the one it is given."""
    return catalog.list_models(get_settings().models_dir)


def runs_dir() -> Path:
    path = (get_settings().data_dir / "runs").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def validate_run(
    *,
    db: Session,
    user: User,
    snapshot_id: int,
    base_model: str,
    method: str,
    hyperparameters: dict[str, Any],
    objective: str = "sft",
    gpus: int = 1,
    nodes: int = 1,
    continue_from: int | None = None,
    launched: bool = True,
) -> tuple[Snapshot, Dataset, TrainConfig]:
    """Every check of a run's request (POST /training-runs and its export share them), as 4xx naming the field:
    the snapshot (curators and admins), GPUs and nodes, the base model, hyperparameters as a TrainConfig, an
    earlier run to continue, preference pairs. Returns the snapshot, its dataset and the TrainConfig."""
    from trainer.config import TrainConfig  # pydantic only: no torch in the web process

    snap = require_snapshot(db=db, user=user, snapshot_id=snapshot_id, min_role=Role.curator.value)
    check_gpus(gpus=gpus, nodes=nodes, launched=launched)
    model_path = resolve_base_model(base_model)
    reserved = sorted((RESERVED | {"objective"}) & set(hyperparameters))
    if reserved:
        raise Invalid(f"hyperparameters may not set {', '.join(reserved)}", field="hyperparameters")
    check_server_side_options(hyperparameters)
    from app.datasets.models import Dataset

    dataset = db.get(Dataset, snap.dataset_id)
    assert dataset is not None
    lineage: dict[str, Any] = {}
    if continue_from is not None:
        _earlier, adapter = continued_adapter(
            db=db, run_id=continue_from, project_id=dataset.project_id, base_model=base_model, method=method
        )
        lineage["init_adapter"] = str(adapter)
    try:
        config = TrainConfig.model_validate(
            {
                **hyperparameters,
                **lineage,
                "base_model": str(model_path),
                "models_dir": str(get_settings().models_dir.resolve()),
                "dataset_path": "<set by the worker>",
                "output_dir": "<set by the worker>",
                "method": method,
                "objective": objective,
                "allow_hub_download": False,
                "gpus": gpus,
                "nodes": nodes,
            }
        )
    except ValidationError as exc:
        raise Invalid(validation_message(exc.errors(), prefix="hyperparameters")) from exc
    if config.objective != "sft":
        require_pairs(db=db, snapshot=snap, objective=config.objective)
    return snap, dataset, config


def create_run(
    *,
    db: Session,
    user: User,
    snapshot_id: int,
    base_model: str,
    method: str,
    hyperparameters: dict[str, Any],
    objective: str = "sft",
    gpus: int = 1,
    nodes: int = 1,
    continue_from: int | None = None,
) -> TrainingRun:
    snap, dataset, config = validate_run(
        db=db,
        user=user,
        snapshot_id=snapshot_id,
        base_model=base_model,
        method=method,
        hyperparameters=hyperparameters,
        objective=objective,
        gpus=gpus,
        nodes=nodes,
        continue_from=continue_from,
    )
    job = jobs.create_job(
        db=db,
        user=user,
        kind="train",
        project_id=dataset.project_id,
        dataset_id=None,
        params={"run_id": 0},
        enqueue=False,
        internal=True,
    )
    run = TrainingRun(
        project_id=dataset.project_id,
        snapshot_id=snap.id,
        job_id=job.id,
        base_model=base_model,
        method=method,
        config=config.model_dump(mode="json"),
        code_version=code_version(),
        created_by=user.id,
    )
    db.add(run)
    db.flush()
    # A unique folder: a reset database must never resume from another run's checkpoints.
    run.artifacts_dir = str(runs_dir() / f"run-{run.id}-{uuid.uuid4().hex[:8]}")
    job.params = {"run_id": run.id}
    audit.record(
        db=db,
        user_id=user.id,
        action="training.create",
        entity_type="training_run",
        entity_id=run.id,
        project_id=dataset.project_id,
        detail={"snapshot": snap.id, "method": method, "continue_from": continue_from},
    )
    db.commit()
    jobs.send(db=db, job=job)
    return run


def require_run(*, db: Session, user: User, run_id: int, min_role: str = Role.annotator.value) -> TrainingRun:
    run = get_or_404(db, TrainingRun, run_id, f"training run {run_id}")
    with not_found_as(f"training run {run_id}"):
        require_project(db=db, user=user, project_id=run.project_id, min_role=min_role)
    return run


def job_of(*, db: Session, run: TrainingRun) -> Job | None:
    """The job that runs the training run (its status, error and progress)."""
    return db.get(Job, run.job_id)


def list_runs(*, db: Session, user: User, project_id: int | None) -> Sequence[tuple[TrainingRun, Job]]:
    query = select(TrainingRun, Job).join(Job, Job.id == TrainingRun.job_id).order_by(TrainingRun.id.desc())
    if project_id is not None:
        require_project(db=db, user=user, project_id=project_id)
        query = query.where(TrainingRun.project_id == project_id)
    elif user.role != Role.admin.value:
        from app.projects.models import ProjectMember

        query = query.where(
            TrainingRun.project_id.in_(
                select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)
            )
        )
    return [(r, j) for r, j in db.execute(query.limit(200)).all()]


def metrics(*, db: Session, run_id: int) -> Sequence[TrainingMetric]:
    return db.scalars(
        select(TrainingMetric).where(TrainingMetric.run_id == run_id).order_by(TrainingMetric.step)
    ).all()


def list_artifacts(run: TrainingRun) -> list[tuple[str, int]]:
    root = Path(run.artifacts_dir)
    if not root.is_dir():
        return []
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and CHECKPOINTS_DIR not in p.relative_to(root).parts
    )


def artifact_path(run: TrainingRun, rel: str) -> Path:
    """The file `rel` inside the run's folder; anything that escapes it (.., absolute, symlink) is 404."""
    root = Path(run.artifacts_dir).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound(f"artifact {rel!r} not found")
    return target


def download_artifact(*, db: Session, user: User, run_id: int, path: str) -> Path:
    """A run's file for download, audited: how the run went for its project's members, the rest for curators."""
    needs = Role.annotator.value if path in MEMBER_ARTIFACTS else Role.curator.value
    run = require_run(db=db, user=user, run_id=run_id, min_role=needs)
    target = artifact_path(run, path)
    audit.record(
        db=db,
        user_id=user.id,
        action="training.artifact_download",
        entity_type="training_run",
        entity_id=run.id,
        project_id=run.project_id,
        detail={"path": path, "bytes": target.stat().st_size},
    )
    return target


def read_samples(*, db: Session, user: User, run_id: int) -> SamplesRead:
    """The run's generations for held-out prompts (samples.jsonl): snapshot data, so curators and admins only,
    audited like a download. A missing file (the run has not finished) and malformed lines are no error."""
    run = require_run(db=db, user=user, run_id=run_id, min_role=Role.curator.value)
    path = Path(run.artifacts_dir) / SAMPLES_FILE
    if not path.is_file():
        return SamplesRead(written=False, samples=[])
    samples: list[SampleRead] = []
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            sample = _sample(line)
            if sample is None:
                skipped += 1
            elif len(samples) < MAX_SAMPLES:
                samples.append(sample)
    audit.record(
        db=db,
        user_id=user.id,
        action="training.samples_view",
        entity_type="training_run",
        entity_id=run.id,
        project_id=run.project_id,
        detail={"samples": len(samples)},
    )
    return SamplesRead(written=True, samples=samples, skipped_lines=skipped)


def _sample(line: str) -> SampleRead | None:
    """A samples.jsonl line; None when it is not one (the file is the trainer's, but a page must not 500)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    prompt = data.get("prompt")
    if isinstance(prompt, str):  # a bare prompt string, as hand-made files have it
        messages = [MessageRead(role="user", content=prompt)]
    elif isinstance(prompt, list):
        messages = [
            MessageRead(role=str(m.get("role", "")), content=str(m.get("content", "")))
            for m in prompt
            if isinstance(m, dict)
        ]
    else:
        return None
    step, reference = data.get("step"), data.get("reference")
    return SampleRead(
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        prompt=messages,
        generation=str(data.get("generation") or ""),
        reference=reference if isinstance(reference, str) else None,
    )

"""A typed Python client for the InstructForge HTTP API (`/api/v1`).

    from instructforge.client import Client

    with Client() as forge:                       # INSTRUCTFORGE_URL and INSTRUCTFORGE_TOKEN
        project = forge.create_project("demo")
        dataset = forge.create_dataset(project.id, "seed tasks")
        forge.import_file(dataset.id, "seed_tasks.jsonl")
        job = forge.start_job("dedup", dataset_id=dataset.id)
        forge.wait_for_job(job.id, progress=lambda j: print(j.progress_done, j.counters))
        for record in forge.iter_records(dataset.id, status=["pending"]):
            ...
        evaluation = forge.evaluate_against_base(run_id, judge_teacher="gpt")
        forge.wait_for_job(evaluation.job_id)
        print(forge.get_evaluation(evaluation.id).results["pairwise"])

Every method is one HTTP call (or one call per page), returns a typed, immutable model, and raises an
`APIError` subclass carrying the API's own message (and the field it names) when the service refuses.
Only httpx and pydantic are imported: no service code, no torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

ENV_URL = "INSTRUCTFORGE_URL"
ENV_TOKEN = "INSTRUCTFORGE_TOKEN"  # noqa: S105 - the name of the variable, not a secret
DEFAULT_URL = "http://127.0.0.1:8000"

Status = Literal["pending", "accepted", "rejected", "filtered"]
M = TypeVar("M", bound="Model")


# --- errors ------------------------------------------------------------------------------------------


class APIError(Exception):
    """The service refused a request. `message` is the API's `detail`; `field` the input it names."""

    def __init__(self, status_code: int, message: str, body: Mapping[str, Any], method: str, path: str):
        super().__init__(f"{status_code} {method} {path}: {message}")
        self.status_code = status_code
        self.message = message
        self.body = dict(body)
        self.field: str | None = body.get("field") if isinstance(body.get("field"), str) else None
        self.method = method
        self.path = path


class BadRequest(APIError):
    """400: the request cannot be served as asked."""


class AuthenticationError(APIError):
    """401: no token, or a token that is revoked, expired or belongs to a deactivated user."""


class PermissionDenied(APIError):
    """403: the token's user lacks the role the action needs."""


class NotFoundError(APIError):
    """404: no such object, or one in a project the user is not a member of."""


class ConflictError(APIError):
    """409: a taken name, a stale record `version`, a job in the wrong state."""


class PayloadTooLarge(APIError):
    """413: the upload is over the service's size limit."""


class InvalidRequest(APIError):
    """422: a value the API does not accept; `field` (or `errors`) says which."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.body.get("errors")
        return list(errors) if isinstance(errors, list) else []


class RateLimited(APIError):
    """429: too many attempts (e.g. logins); `retry_after` says when to try again."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.body)


class ServiceUnavailable(APIError):
    """503: the database is unavailable; nothing was stored. Try again after `retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.body)


_ERRORS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def _retry_after(body: Mapping[str, Any]) -> float | None:
    value = body.get("retry_after")
    return float(value) if isinstance(value, int | float) else None


class JobFailed(Exception):
    """`wait_for_job(..., raise_on_failure=True)` saw the job end failed or cancelled."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} ({job.kind}) {job.status}: {job.error or 'no error message'}")
        self.job = job


class WaitTimeout(TimeoutError):
    """`wait_for_job` gave up before the job ended; the job itself goes on."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} ({job.kind}) still {job.status} after {timeout:g} s")
        self.job = job


# --- models ------------------------------------------------------------------------------------------


class Model(BaseModel):
    """A response object. Fields the service adds later are kept (extra="allow"), never an error."""

    model_config = ConfigDict(extra="allow", frozen=True)


class User(Model):
    id: int
    username: str
    role: str
    is_active: bool
    created_at: datetime


class Token(Model):
    id: int
    name: str
    prefix: str
    created_at: datetime
    token: str = Field(repr=False)


class Project(Model):
    id: int
    name: str
    description: str
    created_at: datetime


class Dataset(Model):
    id: int
    project_id: int
    name: str
    language: str
    description: str
    guidelines: str
    settings: dict[str, Any]
    created_at: datetime


class DatasetStats(Model):
    dataset_id: int
    counts: dict[str, int]
    total: int


class Record(Model):
    id: int
    dataset_id: int
    instruction: str
    input: str
    output: str
    system: str | None
    messages: list[dict[str, Any]] | None
    status: str
    reason: str | None
    source: str
    parent_id: int | None
    job_id: int | None
    teacher_model: str | None
    tags: list[str]
    rating: int | None
    label: str | None
    is_classification: bool | None
    judge_score: float | None
    nn_score: float | None
    nn_record_id: int | None
    meta: dict[str, Any]
    version: int
    flagged: bool
    human_decided: bool
    advice: str | None
    created_at: datetime
    updated_at: datetime


class BadLine(Model):
    line: int
    field: str | None
    message: str


class ImportResult(Model):
    """What an import stored at once (`job_id` None), or the import job it became (`imported` 0)."""

    imported: int
    skipped_duplicates: int = 0
    bad: list[BadLine] = []
    format: str
    job_id: int | None = None


class Job(Model):
    id: int
    project_id: int
    dataset_id: int | None
    kind: str
    queue: str
    params: dict[str, Any]
    status: str
    progress_done: int
    progress_total: int | None
    counters: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    cancel_requested: bool
    attempts: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    created_by: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> bool:
        """The job will not move on its own: it ended, or it is paused until someone resumes it."""
        return self.status in ("succeeded", "failed", "cancelled", "paused")


class JobKind(Model):
    name: str
    queue: str
    description: str
    params_schema: dict[str, Any]


class Teacher(Model):
    name: str
    model: str
    base_url: str | None = None
    api: str
    max_concurrency: int
    price_in_per_1k: float
    price_out_per_1k: float


class Estimate(Model):
    sampled_calls: int
    tokens_in_per_call: float
    tokens_out_per_call: float
    cost_per_call_usd: float
    total_calls: int
    estimated_cost_usd: float


class Snapshot(Model):
    id: int
    dataset_id: int
    name: str
    description: str
    filter: dict[str, Any]
    content_hash: str
    record_count: int
    stats: dict[str, Any]
    created_by: int | None
    created_at: datetime


class SnapshotDiff(Model):
    added: list[Any]
    removed: list[Any]
    changed: list[Any]
    unchanged: int


class Metric(Model):
    step: int
    values: dict[str, Any]


class TrainingRun(Model):
    id: int
    project_id: int
    snapshot_id: int
    job_id: int
    base_model: str
    method: str
    config: dict[str, Any]
    code_version: str
    summary: dict[str, Any]
    created_at: datetime
    status: str = ""
    error: str | None = None
    progress_done: int = 0
    progress_total: int | None = None
    metrics: list[Metric] = []


class Artifact(Model):
    path: str
    size: int


class EvaluationSystem(Model):
    id: int
    position: int
    name: str
    kind: str
    base_model: str | None
    training_run_id: int | None
    teacher: str | None


class Evaluation(Model):
    """An evaluation; `results` (win rates with intervals, lengths, scores, validation loss,
    decontamination) is filled by `get_evaluation` once its job succeeded."""

    id: int
    project_id: int
    name: str
    dataset_id: int | None
    snapshot_id: int | None
    split: str
    judge_teacher: str
    params: dict[str, Any]
    job_id: int
    created_by: int | None
    created_at: datetime
    status: str = ""
    error: str | None = None
    progress_done: int = 0
    progress_total: int | None = None
    counters: dict[str, Any] = {}
    cost_usd: float = 0.0
    systems: list[EvaluationSystem] = []
    results: dict[str, Any] = {}


def base_system(base_model: str, name: str | None = None) -> dict[str, Any]:
    """A system for `create_evaluation`: a base model under the service's models folder."""
    return {"kind": "base", "base_model": base_model, "name": name}


def run_system(training_run_id: int, name: str | None = None) -> dict[str, Any]:
    """A system for `create_evaluation`: a training run's adapter on its base model."""
    return {"kind": "run", "training_run_id": training_run_id, "name": name}


def teacher_system(teacher: str, name: str | None = None) -> dict[str, Any]:
    """A system for `create_evaluation`: a configured teacher endpoint (the ceiling)."""
    return {"kind": "teacher", "teacher": teacher, "name": name}


# --- the client --------------------------------------------------------------------------------------


class Client:
    """One InstructForge service. `url` and `token` default to $INSTRUCTFORGE_URL and $INSTRUCTFORGE_TOKEN.

    `transport` is passed to httpx (e.g. `httpx.HTTPTransport(retries=3)` for connection retries).
    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base = (url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        self.url = base
        token = token if token is not None else os.environ.get(ENV_TOKEN)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def login(
        cls,
        username: str,
        password: str,
        url: str | None = None,
        *,
        token_name: str = "python-client",  # noqa: S107 - a label, not a secret
    ) -> Client:
        """A client holding a new API token made from a username and password (throttled as a login).
        The token stays valid until revoked: keep `client.token` rather than logging in each time."""
        with cls(url, token="") as anonymous:
            created = anonymous._call(
                "POST", "/auth/tokens", json={"name": token_name, "username": username, "password": password}
            )
        client = cls(url, token=Token.model_validate(created).token)
        return client

    @property
    def token(self) -> str | None:
        auth = self._http.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ") or None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise _error(response, method, path)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def _one(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._call(method, path, **kwargs))

    def _many(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        return [model.model_validate(item) for item in self._call("GET", path, **kwargs)]

    # -- account --

    def me(self) -> User:
        """The user the token belongs to."""
        return User.model_validate(self._call("GET", "/auth/me")["user"])

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    # -- projects and datasets --

    def list_projects(self) -> list[Project]:
        return self._many(Project, "/projects")

    def get_project(self, project_id: int) -> Project:
        return self._one(Project, "GET", f"/projects/{project_id}")

    def create_project(self, name: str, description: str = "") -> Project:
        return self._one(Project, "POST", "/projects", json={"name": name, "description": description})

    def add_member(self, project_id: int, user_id: int, role: str) -> dict[str, Any]:
        return dict(
            self._call("PUT", f"/projects/{project_id}/members", json={"user_id": user_id, "role": role})
        )

    def list_datasets(self, project_id: int) -> list[Dataset]:
        return self._many(Dataset, f"/projects/{project_id}/datasets")

    def get_dataset(self, dataset_id: int) -> Dataset:
        return self._one(Dataset, "GET", f"/datasets/{dataset_id}")

    def create_dataset(
        self,
        project_id: int,
        name: str,
        *,
        language: str = "en",
        description: str = "",
        guidelines: str = "",
        settings: Mapping[str, Any] | None = None,
    ) -> Dataset:
        body: dict[str, Any] = {
            "name": name,
            "language": language,
            "description": description,
            "guidelines": guidelines,
        }
        if settings is not None:
            body["settings"] = dict(settings)
        return self._one(Dataset, "POST", f"/projects/{project_id}/datasets", json=body)

    def dataset_stats(self, dataset_id: int) -> DatasetStats:
        return self._one(DatasetStats, "GET", f"/datasets/{dataset_id}/stats")

    # -- import --

    def import_file(
        self,
        dataset_id: int,
        file: str | Path | bytes | IO[bytes],
        *,
        format: str = "auto",
        skip_bad: bool = False,
        filename: str | None = None,
    ) -> ImportResult:
        """Import a file (path, bytes or binary file object), streamed as the request body.

        Small files import at once; large ones become an import job (`result.job_id`: see `wait_for_job`).
        One bad line and nothing is written (`InvalidRequest` naming the line), unless `skip_bad`."""
        params: dict[str, Any] = {"format": format, "skip_bad": skip_bad}
        if isinstance(file, str | Path):
            path = Path(file)
            params["filename"] = filename or path.name
            with path.open("rb") as fh:
                return self._one(
                    ImportResult, "POST", f"/datasets/{dataset_id}/import", params=params, content=fh
                )
        if filename:
            params["filename"] = filename
        return self._one(ImportResult, "POST", f"/datasets/{dataset_id}/import", params=params, content=file)

    # -- records --

    def iter_records(
        self,
        dataset_id: int,
        *,
        status: Status | Sequence[Status] | None = None,
        page_size: int = 500,
        desc: bool = False,
        **filters: Any,
    ) -> Iterator[Record]:
        """Every record matching the filter, page by page with the API's cursor (stable under writes:
        records are ordered by id). Filters: source, tag, q, reason, label, flagged, job_id,
        min_nn_score, max_nn_score, min_judge_score, max_judge_score, human_decided, disagreement."""
        params: dict[str, Any] = {k: _query_value(v) for k, v in filters.items() if v is not None}
        if status is not None:
            params["status"] = [status] if isinstance(status, str) else list(status)
        params.update(limit=page_size, desc=_query_value(desc))
        while True:
            page = self._call("GET", f"/datasets/{dataset_id}/records", params=params)
            for item in page["items"]:
                yield Record.model_validate(item)
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def get_record(self, record_id: int) -> Record:
        return self._one(Record, "GET", f"/records/{record_id}")

    def update_record(self, record_id: int, *, version: int, **changes: Any) -> Record:
        """Edit content, status, rating, tags or label. `version` is the one you read: a stale one raises
        `ConflictError` rather than overwrite someone else's edit."""
        return self._one(Record, "PATCH", f"/records/{record_id}", json={"version": version, **changes})

    def record_revisions(self, record_id: int) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/records/{record_id}/revisions"))

    def bulk_status(
        self, dataset_id: int, status: Status, *, filter: Mapping[str, Any], reason: str | None = None
    ) -> int:
        """Set the status of every record matching `filter`; returns how many changed."""
        body = {"filter": dict(filter), "status": status, "reason": reason}
        return int(self._call("POST", f"/datasets/{dataset_id}/records/bulk-status", json=body)["updated"])

    # -- jobs --

    def job_kinds(self) -> list[JobKind]:
        return self._many(JobKind, "/jobs/kinds")

    def teachers(self) -> list[Teacher]:
        return self._many(Teacher, "/teachers")

    def estimate(
        self, kind: str, *, dataset_id: int, params: Mapping[str, Any] | None = None, sample_prompts: int = 3
    ) -> Estimate:
        """Cost, tokens and calls of a generation job before starting it (a few real teacher calls)."""
        body = {
            "kind": kind,
            "dataset_id": dataset_id,
            "params": dict(params or {}),
            "sample_prompts": sample_prompts,
        }
        return self._one(Estimate, "POST", "/generation/estimate", json=body)

    def start_job(
        self,
        kind: str,
        *,
        dataset_id: int | None = None,
        project_id: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Job:
        body = {
            "kind": kind,
            "dataset_id": dataset_id,
            "project_id": project_id,
            "params": dict(params or {}),
        }
        return self._one(Job, "POST", "/jobs", json=body)

    def get_job(self, job_id: int) -> Job:
        return self._one(Job, "GET", f"/jobs/{job_id}")

    def list_jobs(
        self,
        *,
        project_id: int | None = None,
        dataset_id: int | None = None,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        params = {"project_id": project_id, "dataset_id": dataset_id, "status": status, "kind": kind}
        return self._many(
            Job, "/jobs", params={**{k: v for k, v in params.items() if v is not None}, "limit": limit}
        )

    def cancel_job(self, job_id: int) -> Job:
        return self._one(Job, "POST", f"/jobs/{job_id}/cancel")

    def resume_job(self, job_id: int) -> Job:
        """Run a paused or failed job again from its checkpoints (answers already paid for are cached)."""
        return self._one(Job, "POST", f"/jobs/{job_id}/resume")

    def wait_for_job(
        self,
        job_id: int,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: Callable[[Job], None] | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job succeeds, fails, is cancelled or pauses; returns its last state.

        `progress` is called with each new state (progress, counters, cost changed). A failed or
        cancelled job raises `JobFailed` unless `raise_on_failure=False`; past `timeout` seconds
        `WaitTimeout` is raised and the job goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[Any, ...] | None = None
        while True:
            job = self.get_job(job_id)
            seen = (job.status, job.progress_done, job.progress_total, job.counters, job.cost_usd)
            if progress is not None and seen != last:
                progress(job)
            last = seen
            if job.done:
                if raise_on_failure and job.status in ("failed", "cancelled"):
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout or 0.0)
            time.sleep(poll_interval)

    # -- snapshots and exports --

    def create_snapshot(
        self, dataset_id: int, name: str, *, description: str = "", filter: Mapping[str, Any] | None = None
    ) -> Snapshot:
        """Freeze the records matching `filter` (default: the accepted ones) as an immutable snapshot."""
        body: dict[str, Any] = {"name": name, "description": description}
        if filter is not None:
            body["filter"] = dict(filter)
        return self._one(Snapshot, "POST", f"/datasets/{dataset_id}/snapshots", json=body)

    def list_snapshots(self, dataset_id: int) -> list[Snapshot]:
        return self._many(Snapshot, f"/datasets/{dataset_id}/snapshots")

    def get_snapshot(self, snapshot_id: int) -> Snapshot:
        return self._one(Snapshot, "GET", f"/snapshots/{snapshot_id}")

    def diff_snapshots(self, a_id: int, b_id: int) -> SnapshotDiff:
        return self._one(SnapshotDiff, "GET", f"/snapshots/{a_id}/diff/{b_id}")

    def export_snapshot(
        self, snapshot_id: int, dest: str | Path, *, format: str = "alpaca", **options: Any
    ) -> Path:
        """Download an export (streamed) into `dest`: a file path, or a directory to keep the service's
        file name. Options are the export's query parameters (val_fraction, seed, bundle, parquet: see
        docs/formats.md). Returns the path."""
        params = {"format": format, **{k: _query_value(v) for k, v in options.items() if v is not None}}
        return self._download(f"/snapshots/{snapshot_id}/export", Path(dest), params=params)

    # -- training --

    def start_training(
        self,
        snapshot_id: int,
        base_model: str,
        *,
        method: str = "lora",
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> TrainingRun:
        body = {
            "snapshot_id": snapshot_id,
            "base_model": base_model,
            "method": method,
            "hyperparameters": dict(hyperparameters or {}),
        }
        return self._one(TrainingRun, "POST", "/training-runs", json=body)

    def export_training_bundle(
        self,
        snapshot_id: int,
        base_model: str,
        dest: str | Path,
        *,
        method: str = "lora",
        hyperparameters: Mapping[str, Any] | None = None,
        objective: str = "sft",
        gpus: int = 1,
        nodes: int = 1,
        continue_from: int | None = None,
    ) -> Path:
        """Download the launch bundle of the run these arguments describe, without starting it (a .tar.gz:
        train_config.yaml, dataset.jsonl, launch.sh, README.txt) into `dest`, a file or a folder; for Slurm or
        Kubernetes, several nodes included (docs/training.md, Several machines). Returns the path."""
        body = {
            "snapshot_id": snapshot_id,
            "base_model": base_model,
            "method": method,
            "hyperparameters": dict(hyperparameters or {}),
            "objective": objective,
            "gpus": gpus,
            "nodes": nodes,
            "continue_from": continue_from,
        }
        return self._download("/training-runs/export", Path(dest), method="POST", json=body)

    def list_training_runs(self, project_id: int | None = None) -> list[TrainingRun]:
        params = {} if project_id is None else {"project_id": project_id}
        return self._many(TrainingRun, "/training-runs", params=params)

    def get_training_run(self, run_id: int) -> TrainingRun:
        return self._one(TrainingRun, "GET", f"/training-runs/{run_id}")

    def cancel_training_run(self, run_id: int) -> TrainingRun:
        return self._one(TrainingRun, "POST", f"/training-runs/{run_id}/cancel")

    def training_artifacts(self, run_id: int) -> list[Artifact]:
        return self._many(Artifact, f"/training-runs/{run_id}/artifacts")

    def download_artifact(self, run_id: int, path: str, dest: str | Path) -> Path:
        """Download one artifact (e.g. `adapter/adapter_model.safetensors`) into `dest` (file or folder)."""
        return self._download(f"/training-runs/{run_id}/artifacts/{path}", Path(dest))

    # -- evaluations --

    def create_evaluation(
        self,
        *,
        systems: Sequence[Mapping[str, Any]],
        judge_teacher: str,
        dataset_id: int | None = None,
        snapshot_id: int | None = None,
        **options: Any,
    ) -> Evaluation:
        """Queue an evaluation: every system (`base_system`, `run_system`, `teacher_system`) answers the
        prompt set (a dataset or a snapshot), the judge compares every pair in both orders. Options are
        the API's: name, split, val_fraction, seed, max_prompts, rubric, use_reference, scores, language,
        budget_usd, generation={...} (see docs/evaluation.md)."""
        body = {
            "systems": [dict(s) for s in systems],
            "judge_teacher": judge_teacher,
            "dataset_id": dataset_id,
            "snapshot_id": snapshot_id,
            **options,
        }
        return self._one(Evaluation, "POST", "/evaluations", json=body)

    def evaluate_against_base(self, run_id: int, judge_teacher: str, **options: Any) -> Evaluation:
        """Queue an evaluation of a training run against its base model (its validation split by default)."""
        body = {"judge_teacher": judge_teacher, **options}
        return self._one(Evaluation, "POST", f"/training-runs/{run_id}/evaluate-against-base", json=body)

    def list_evaluations(self, project_id: int | None = None) -> list[Evaluation]:
        params = {} if project_id is None else {"project_id": project_id}
        return self._many(Evaluation, "/evaluations", params=params)

    def get_evaluation(self, evaluation_id: int) -> Evaluation:
        return self._one(Evaluation, "GET", f"/evaluations/{evaluation_id}")

    def cancel_evaluation(self, evaluation_id: int) -> Evaluation:
        return self._one(Evaluation, "POST", f"/evaluations/{evaluation_id}/cancel")

    def resume_evaluation(self, evaluation_id: int) -> Evaluation:
        return self._one(Evaluation, "POST", f"/evaluations/{evaluation_id}/resume")

    def export_evaluation(self, evaluation_id: int, dest: str | Path) -> Path:
        """Every prompt, answer and verdict as JSON Lines, streamed into `dest` (file or folder)."""
        return self._download(f"/evaluations/{evaluation_id}/export.jsonl", Path(dest))

    # -- helpers --

    def _download(
        self,
        path: str,
        dest: Path,
        params: Mapping[str, Any] | None = None,
        *,
        method: str = "GET",
        json: Any = None,
    ) -> Path:
        with self._http.stream(method, path, params=params, json=json) as response:
            if response.is_error:
                response.read()
                raise _error(response, method, path)
            target = dest / _filename(response, path) if dest.is_dir() else dest
            partial = target.with_name(target.name + ".part")
            try:
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                partial.replace(target)  # a download cut short never looks like a whole file
            finally:
                partial.unlink(missing_ok=True)
        return target


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _filename(response: httpx.Response, path: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename" and value:
            name = Path(value.strip('"')).name
            if name:
                return name
    return Path(path).name or "download"


def _error(response: httpx.Response, method: str, path: str) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text[:500] or response.reason_phrase}
    detail = body.get("detail")
    message = detail if isinstance(detail, str) else str(detail)
    if "retry_after" not in body and response.headers.get("Retry-After", "").isdigit():
        body["retry_after"] = int(response.headers["Retry-After"])
    cls = _ERRORS.get(response.status_code, APIError)
    return cls(response.status_code, message, body, method, path)

"""`instructforge.client` against the real running service: uvicorn serving the API on PostgreSQL, a
Celery worker on Redis running the jobs, and the fake teacher over HTTP. The user guide's flow, driven
from Python, and the API's refusals raised as exceptions carrying its message."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from instructforge.client import (
    AuthenticationError,
    Client,
    ConflictError,
    InvalidRequest,
    Job,
    JobFailed,
    NotFoundError,
    PermissionDenied,
    teacher_system,
)
from tests.conftest import PG_URL, engine_for, flushed_redis_url, truncate_all
from tests.factories import PASSWORD, make_user
from tests.procs import free_port, kill, service_env, start_api, start_worker

pytestmark = pytest.mark.slow


@dataclass
class Service:
    url: str
    seed_tasks: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from tests.conftest import SHARED_DATA
    from tests.fake_teacher import FakeTeacher

    seed_tasks = SHARED_DATA / "self-instruct" / "seed_tasks.jsonl"
    if not seed_tasks.is_file():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("client")
    engine = engine_for("postgresql")
    truncate_all(engine)
    with Session(engine) as db:
        make_user(db, "admin", username="admin")
        make_user(db, "annotator", username="ann")
        db.commit()
    with FakeTeacher.start() as teacher:
        teachers = [{"name": "fake", "base_url": teacher.base_url, "model": "fake-model", "max_retries": 1}]
        env = service_env(
            database_url=PG_URL,
            broker_url=flushed_redis_url(),
            data_dir=tmp / "data",
            IF_TEACHERS=json.dumps(teachers),
        )
        port = free_port()
        api = start_api(env, tmp / "api.log", port)
        worker = start_worker(env, tmp / "worker.log", queues="default,gpu")  # evaluations run on gpu
        try:
            yield Service(url=f"http://127.0.0.1:{port}", seed_tasks=seed_tasks)
        finally:
            kill(worker)
            kill(api)
            truncate_all(engine)


@pytest.fixture(scope="module")
def forge(service: Service) -> Iterator[Client]:
    with Client.login("admin", PASSWORD, service.url) as client:
        yield client


def test_user_guide_flow_from_python_import_iterate_curate_snapshot_export(
    service: Service, forge: Client, tmp_path: Path
) -> None:
    project = forge.create_project("client-demo", description="from Python")
    dataset = forge.create_dataset(project.id, "seed tasks", guidelines="Accept correct answers.")
    assert forge.get_dataset(dataset.id).name == "seed tasks"
    assert [p.id for p in forge.list_projects()] == [project.id]

    imported = forge.import_file(dataset.id, service.seed_tasks)
    assert imported.imported == 175 and imported.job_id is None and imported.format == "self_instruct"

    # Cursor pagination: every record once, in id order, across pages of 40.
    records = list(forge.iter_records(dataset.id, page_size=40))
    assert len(records) == forge.dataset_stats(dataset.id).total == 175
    assert [r.id for r in records] == sorted({r.id for r in records})
    assert {r.status for r in records} == {"pending"}

    seen: list[Job] = []
    job = forge.start_job("dedup", dataset_id=dataset.id)
    done = forge.wait_for_job(job.id, timeout=120, poll_interval=0.2, progress=seen.append)
    assert done.status == "succeeded" and done.finished_at is not None
    assert seen and seen[-1].status == "succeeded" and seen[-1] == done
    filtered = list(forge.iter_records(dataset.id, status="filtered"))
    assert done.counters["scanned"] == 175
    assert (
        len(filtered)
        == done.counters["exact_dup"] + done.counters["rouge_dup"]
        == 175 - done.counters["kept"]
    )
    assert all(r.reason for r in filtered)

    kept = [r for r in forge.iter_records(dataset.id, status=["pending"])]
    assert len(kept) + len(filtered) == 175
    accepted = forge.bulk_status(dataset.id, "accepted", filter={"status": ["pending"]})
    assert accepted == len(kept)

    first = forge.get_record(kept[0].id)
    edited = forge.update_record(first.id, version=first.version, rating=5, tags=["client"])
    assert (edited.rating, edited.tags, edited.version) == (5, ["client"], first.version + 1)
    assert list(forge.iter_records(dataset.id, tag="client")) == [edited]

    snapshot = forge.create_snapshot(dataset.id, "v1")
    assert snapshot.record_count == len(kept) and len(snapshot.content_hash) == 64
    assert [s.id for s in forge.list_snapshots(dataset.id)] == [snapshot.id]

    exported = forge.export_snapshot(snapshot.id, tmp_path / "v1.json", format="alpaca")
    rows = json.loads(exported.read_text())
    assert {r["instruction"] for r in rows} == {r.instruction for r in kept}
    bundle = forge.export_snapshot(snapshot.id, tmp_path, format="openai", val_fraction=0.1, seed=1)
    assert bundle.parent == tmp_path and bundle.suffix == ".zip" and not list(tmp_path.glob("*.part"))
    with zipfile.ZipFile(bundle) as z:
        lines = [ln for name in z.namelist() if name.endswith(".jsonl") for ln in z.read(name).splitlines()]
    assert len(lines) == len(kept)


def test_estimate_and_teachers_come_from_the_configured_teacher(service: Service, forge: Client) -> None:
    project = forge.create_project("client-estimate")
    dataset = forge.create_dataset(project.id, "seeds")
    forge.import_file(dataset.id, service.seed_tasks)
    assert [(t.name, t.model) for t in forge.teachers()] == [("fake", "fake-model")]
    estimate = forge.estimate(
        "self_instruct", dataset_id=dataset.id, params={"teacher": "fake", "target": 20}
    )
    assert estimate.sampled_calls >= 1 and estimate.total_calls >= 1 and estimate.tokens_in_per_call > 0
    assert "self_instruct" in {k.name for k in forge.job_kinds()}


def test_refusals_raise_exceptions_carrying_the_apis_message_and_field(
    service: Service, forge: Client
) -> None:
    project = forge.create_project("client-errors")
    dataset = forge.create_dataset(project.id, "d")

    with pytest.raises(ConflictError) as taken:
        forge.create_project("client-errors")
    assert taken.value.status_code == 409 and taken.value.field == "name" and "name" in taken.value.message

    with pytest.raises(NotFoundError):
        forge.get_record(987654321)

    with pytest.raises(InvalidRequest) as bad_line:
        forge.import_file(
            dataset.id, b'{"instruction": "ok", "output": "fine"}\n{not json\n', filename="x.jsonl"
        )
    assert "2" in bad_line.value.message  # the bad line is named
    assert forge.dataset_stats(dataset.id).total == 0  # and nothing was written

    forge.import_file(dataset.id, b'{"instruction": "Say hi.", "output": "hi"}\n', filename="y.jsonl")
    record = next(forge.iter_records(dataset.id))
    forge.update_record(record.id, version=record.version, rating=4)
    with pytest.raises(ConflictError):  # a stale version never overwrites someone's edit
        forge.update_record(record.id, version=record.version, rating=1)
    with pytest.raises(InvalidRequest) as rating:
        forge.update_record(record.id, version=record.version + 1, rating=9)
    assert "rating" in rating.value.message and rating.value.errors

    job = forge.start_job("dedup", dataset_id=dataset.id)
    forge.wait_for_job(job.id, timeout=120, poll_interval=0.2)
    with pytest.raises(InvalidRequest) as resume:
        forge.resume_job(job.id)  # a job that succeeded has nothing to resume
    assert "only paused or failed jobs" in resume.value.message
    with pytest.raises(InvalidRequest) as kind:
        forge.start_job("no-such-kind", dataset_id=dataset.id)
    assert "no-such-kind" in kind.value.message

    with pytest.raises(AuthenticationError), Client(service.url, token="not-a-token") as anonymous:
        anonymous.list_projects()
    with (
        Client.login("ann", PASSWORD, service.url) as annotator,
        pytest.raises((PermissionDenied, NotFoundError)),
    ):
        annotator.create_dataset(project.id, "not allowed")


def test_wait_for_a_cancelled_job_raises_job_failed_unless_asked_not_to(
    service: Service, forge: Client
) -> None:
    project = forge.create_project("client-cancel")
    dataset = forge.create_dataset(project.id, "d")
    forge.import_file(dataset.id, service.seed_tasks)
    job = forge.start_job(
        "self_instruct", dataset_id=dataset.id, params={"teacher": "fake", "target": 100000, "budget_usd": 1}
    )
    forge.cancel_job(job.id)
    with pytest.raises(JobFailed) as failed:
        forge.wait_for_job(job.id, timeout=120, poll_interval=0.2)
    assert failed.value.job.status == "cancelled", failed.value.job.error
    assert forge.wait_for_job(job.id, raise_on_failure=False).status == "cancelled"


def test_token_and_url_come_from_the_environment(
    service: Service, forge: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTRUCTFORGE_URL", service.url)
    monkeypatch.setenv("INSTRUCTFORGE_TOKEN", forge.token or "")
    with Client() as client:
        assert client.me().username == "admin"
    monkeypatch.delenv("INSTRUCTFORGE_TOKEN")
    with Client() as client, pytest.raises(AuthenticationError) as missing:
        client.me()
    assert missing.value.message


def test_training_run_refusal_names_the_base_model(forge: Client) -> None:
    project = forge.create_project("client-train")
    dataset = forge.create_dataset(project.id, "d")
    forge.import_file(dataset.id, b'{"instruction": "Say hi.", "output": "hi"}\n', filename="t.jsonl")
    forge.bulk_status(dataset.id, "accepted", filter={})
    snapshot = forge.create_snapshot(dataset.id, "s")
    with pytest.raises(InvalidRequest) as refused:
        forge.start_training(snapshot.id, "no-such-model")
    assert "no-such-model" in refused.value.message
    assert forge.list_training_runs(project.id) == []


def test_an_evaluation_of_two_teacher_systems_runs_and_exports_from_python(
    service: Service, forge: Client, tmp_path: Path
) -> None:
    project = forge.create_project("client-eval")
    dataset = forge.create_dataset(project.id, "prompts")
    forge.import_file(
        dataset.id,
        b'{"turns": ["Name a prime number.", "And another?"], "category": "math", "question_id": 1}\n'
        b'{"turns": ["Give a synonym of happy."], "category": "writing", "question_id": 2}\n',
        filename="questions.jsonl",
    )
    with pytest.raises(InvalidRequest) as one_system:
        forge.create_evaluation(systems=[teacher_system("fake")], judge_teacher="fake", dataset_id=dataset.id)
    assert one_system.value.field == "systems" or "systems" in one_system.value.message

    evaluation = forge.create_evaluation(
        systems=[teacher_system("fake", "first"), teacher_system("fake", "second")],
        judge_teacher="fake",
        dataset_id=dataset.id,
        name="teacher vs teacher",
    )
    assert [s.name for s in evaluation.systems] == ["first", "second"]
    forge.wait_for_job(evaluation.job_id, timeout=180, poll_interval=0.3)
    done = forge.get_evaluation(evaluation.id)
    assert done.status == "succeeded" and "pairwise" in done.results
    assert [e.id for e in forge.list_evaluations(project.id)] == [evaluation.id]
    exported = forge.export_evaluation(evaluation.id, tmp_path)
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    kinds = [line["type"] for line in lines]
    assert exported.suffix == ".jsonl" and kinds[0] == "evaluation"
    assert (kinds.count("system"), kinds.count("prompt"), kinds.count("answer")) == (2, 2, 4)
    assert kinds.count("verdict") >= 2  # each prompt's pair, judged in both orders

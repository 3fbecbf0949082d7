"""From seed tasks to a trained adapter through the running service, driven by its REST API only,
with faults injected: a SIGKILLed worker, a teacher answering 429/500 for a while, an API restart.

Runs on the production shape (PostgreSQL, Redis, separate default and gpu workers) and on the embedded
defaults (`instructforge run`: SQLite, SQLite broker, one worker). `make e2e` runs only these tests.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_URL
from tests.procs import ROOT, free_port, kill, service_env, start_api, start_worker, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
torch = pytest.importorskip("torch")


class Teacher:
    """The fake OpenAI-compatible teacher as a separate process, steered over its admin endpoints."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = tmp / "teacher.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_teacher", "--port", str(self.port)],
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.url}/v1/models", self.proc, log)

    def config(self) -> str:
        return json.dumps(
            [
                {
                    "name": "fake",
                    "base_url": f"{self.url}/v1",
                    "model": "fake-teacher",
                    "max_concurrency": 8,
                    "price_in_per_1k": 0.0005,
                    "price_out_per_1k": 0.0015,
                    "backoff_base_s": 0.2,
                    "backoff_max_s": 2,
                    "max_retries": 8,
                }
            ]
        )

    def faults(self, status: int, count: int, retry_after: float | None = None) -> None:
        httpx.post(
            f"{self.url}/admin/faults", json={"status": status, "count": count, "retry_after": retry_after}
        )

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/admin/stats").json()


class Stack:
    base: str
    env: dict[str, str]

    def kill_default_worker(self) -> None: ...
    def restart_default_worker(self) -> None: ...
    def restart_api(self) -> None: ...
    def stop(self) -> None: ...


class ProductionStack(Stack):
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = start_api(env, tmp / "api.log", self.port)
        self.default = start_worker(env, tmp / "default.log", queues="default", pool="prefork", concurrency=2)
        self.gpu = start_worker(env, tmp / "gpu.log", queues="gpu", pool="solo")

    def kill_default_worker(self) -> None:
        os.killpg(self.default.pid, signal.SIGKILL)
        self.default.wait(timeout=10)

    def restart_default_worker(self) -> None:
        self.default = start_worker(
            self.env, self.tmp / "default2.log", queues="default", pool="prefork", concurrency=2
        )

    def restart_api(self) -> None:
        kill(self.api)
        self.api = start_api(self.env, self.tmp / "api2.log", self.port)

    def stop(self) -> None:
        for proc in (self.api, self.default, self.gpu):
            kill(proc)


class EmbeddedStack(Stack):
    """What `make run` starts: `instructforge run` supervises the API and one worker."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "run.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.base}/api/v1/health", self.proc, self.log, timeout=120)

    def _worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-g", str(self.proc.pid), "-f", "celery -A workers.celery_app worker"],
            capture_output=True,
            text=True,
        ).stdout.split()
        return [int(p) for p in out]

    def kill_default_worker(self) -> None:
        for pid in self._worker_pids():  # the main worker process and its pool children
            os.kill(pid, signal.SIGKILL)

    def restart_default_worker(self) -> None:
        deadline = time.time() + 30  # `run` replaces a dead worker by itself
        while time.time() < deadline and not self._worker_pids():
            time.sleep(0.5)
        assert self._worker_pids(), "instructforge run did not replace the killed worker"

    def restart_api(self) -> None:
        pass  # one supervised process tree: restarting it is the Ctrl-C test in tests/service

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


class Client:
    def __init__(self, stack: Stack, token: str | None = None) -> None:
        self.stack, self.token = stack, token

    def __call__(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 202, 204), **kw: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        for attempt in range(60):  # the API may be restarting
            try:
                resp = httpx.request(
                    method, f"{self.stack.base}/api/v1{path}", headers=headers, timeout=120, **kw
                )
                break
            except httpx.TransportError:
                if attempt == 59:
                    raise
                time.sleep(0.5)
        assert resp.status_code in ok, f"{method} {path}: {resp.status_code} {resp.text[:500]}"
        if resp.headers.get("content-type", "").split(";")[
            0
        ] == "application/json" and "attachment" not in resp.headers.get("content-disposition", ""):
            return resp.json()
        return resp.content

    def wait_job(
        self, job_id: int, timeout: float = 300, until: tuple[str, ...] = ("succeeded",)
    ) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self("GET", f"/jobs/{job_id}")
            if job["status"] in (*until, "failed", "cancelled", "succeeded"):
                assert job["status"] in until, job
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    from tests.trainer.conftest import _save_model, _tokenizer

    root = tmp_path_factory.mktemp("models")
    _save_model(root / "tiny-llama", _tokenizer(None))
    return root


@pytest.fixture(params=["production", "embedded"])
def stack(request, tmp_path, tiny_models) -> Iterator[tuple[Stack, Teacher]]:
    teacher = Teacher(tmp_path)
    common = {
        "IF_TEACHERS": teacher.config(),
        "IF_MODELS_DIR": str(tiny_models),
        "IF_JOB_LEASE_SECONDS": "6",
        "IF_REAPER_INTERVAL_SECONDS": "2",
        "IF_IMPORT_INLINE_MAX_BYTES": "50000",
    }
    if request.param == "production":
        committed = request.getfixturevalue("committed_pg")
        redis_url = request.getfixturevalue("redis_url")
        env = service_env(
            database_url=PG_URL,
            broker_url=redis_url,
            data_dir=tmp_path / "data",
            IF_BROKER_VISIBILITY_TIMEOUT="8",
            **common,
        )
        subprocess.run(
            [sys.executable, "-m", "app.cli", "users", "create", "admin", "--role", "admin"],
            cwd=ROOT,
            env={**env, "IF_NEW_USER_PASSWORD": "admin-password"},
            check=True,
            capture_output=True,
        )
        built: Stack = ProductionStack(tmp_path, env)
        assert committed is not None
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IF_")}
        env.update(
            IF_DATA_DIR=str(tmp_path / "data"),
            IF_ADMIN_PASSWORD="admin-password",
            PYTHONUNBUFFERED="1",
            IF_WORKER_CONCURRENCY="2",
            **common,
        )
        built = EmbeddedStack(tmp_path, env)
    try:
        yield built, teacher
    finally:
        built.stop()
        kill(teacher.proc)


def test_seed_tasks_to_trained_adapter_through_the_api_with_faults(stack, shared_data, tmp_path):
    stack_, teacher = stack
    anon = Client(stack_)
    admin = Client(
        stack_,
        anon("POST", "/auth/tokens", json={"username": "admin", "password": "admin-password"})["token"],
    )

    # 1. project, dataset, users
    users = {}
    for name, role in (("cora", "curator"), ("ann", "annotator")):
        users[name] = admin(
            "POST", "/users", json={"username": name, "password": f"{name}-password", "role": role}
        )
    curator = Client(
        stack_, anon("POST", "/auth/tokens", json={"username": "cora", "password": "cora-password"})["token"]
    )
    annotator = Client(
        stack_, anon("POST", "/auth/tokens", json={"username": "ann", "password": "ann-password"})["token"]
    )
    project = curator("POST", "/projects", json={"name": "e2e"})
    curator(
        "PUT", f"/projects/{project['id']}/members", json={"user_id": users["ann"]["id"], "role": "annotator"}
    )
    dataset = curator(
        "POST", f"/projects/{project['id']}/datasets", json={"name": "self-instruct", "language": "en"}
    )
    ds = dataset["id"]

    # 2. the 175 real seed tasks (large enough to go through the import job)
    seeds = (shared_data / "self-instruct" / "seed_tasks.jsonl").read_bytes()
    imported = curator("POST", f"/datasets/{ds}/import", files={"file": ("seed_tasks.jsonl", seeds)})
    curator.wait_job(imported["job_id"])
    assert curator("GET", f"/datasets/{ds}/stats")["total"] == 175

    # 3. Self-Instruct with a worker SIGKILLed mid-job and the teacher failing for a while
    gen = curator(
        "POST",
        "/jobs",
        json={
            "kind": "self_instruct",
            "dataset_id": ds,
            "params": {"teacher": "fake", "target": 200, "batch_size": 8},
        },
    )
    deadline = time.time() + 120
    while curator("GET", f"/jobs/{gen['id']}")["progress_done"] < 20 and time.time() < deadline:
        time.sleep(0.2)
    stack_.kill_default_worker()
    teacher.faults(429, 6, retry_after=1)
    teacher.faults(500, 6)
    stack_.restart_default_worker()
    stack_.restart_api()
    gen_done = curator.wait_job(gen["id"], timeout=600)
    assert gen_done["result"]["kept_tasks"] >= 200

    evol = curator(
        "POST",
        "/jobs",
        json={
            "kind": "evol",
            "dataset_id": ds,
            "params": {
                "teacher": "fake",
                "rounds": 1,
                "max_items": 30,
                "scope": {"source": "self_instruct*", "status": ["pending"]},
            },
        },
    )
    curator.wait_job(evol["id"])

    # 4. curation
    for kind, params in (("dedup", {}), ("rules", {}), ("judge", {"teacher": "fake", "threshold": 3.0})):
        job = curator("POST", "/jobs", json={"kind": kind, "dataset_id": ds, "params": params})
        curator.wait_job(job["id"])

    # 5. the annotator reviews
    page = annotator("GET", f"/datasets/{ds}/records", params={"status": "pending", "limit": 30})["items"]
    assert len(page) == 30
    for i, rec in enumerate(page):
        body: dict[str, Any] = {"version": rec["version"]}
        if i % 3 == 0:
            body |= {"status": "rejected", "reason": "unhelpful"}
        elif i % 3 == 1:
            body |= {"status": "accepted", "rating": 5}
        else:
            body |= {"output": rec["output"] + " (checked)", "status": "accepted"}
        annotator("PATCH", f"/records/{rec['id']}", json=body)
    curator(
        "POST",
        f"/datasets/{ds}/records/bulk-status",
        json={"filter": {"status": ["pending"], "source": "self_instruct*"}, "status": "accepted"},
    )

    # 6. snapshot and exports that load back identically
    snap = curator("POST", f"/datasets/{ds}/snapshots", json={"name": "v1"})
    assert snap["record_count"] > 100
    from app.pipeline import formats

    exported = {}
    for fmt in ("alpaca", "sharegpt", "openai", "alpaca_jsonl"):
        raw = curator("GET", f"/snapshots/{snap['id']}/export", params={"format": fmt})
        raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
        parsed, bad = formats.parse_all(io.BytesIO(raw), fmt={"alpaca_jsonl": "alpaca"}.get(fmt, fmt))
        assert not bad and len(parsed) == snap["record_count"]
        exported[fmt] = [
            formats.to_messages(
                {
                    "instruction": p.instruction,
                    "input": p.input,
                    "output": p.output,
                    "system": p.system,
                    "messages": p.messages,
                }
            )
            for p in parsed
        ]
    assert exported["alpaca"] == exported["sharegpt"] == exported["openai"] == exported["alpaca_jsonl"]
    split = curator(
        "GET", f"/snapshots/{snap['id']}/export", params={"format": "openai", "val_fraction": 0.1, "seed": 7}
    )
    with zipfile.ZipFile(io.BytesIO(split)) as zf:
        assert sum(len(zf.read(n).splitlines()) for n in zf.namelist()) == snap["record_count"]

    # 7. train a LoRA adapter on the snapshot, download it, load it and generate
    run = curator(
        "POST",
        "/training-runs",
        json={
            "snapshot_id": snap["id"],
            "base_model": "tiny-llama",
            "method": "lora",
            "hyperparameters": {
                "max_steps": 20,
                "batch_size": 4,
                "grad_accum": 1,
                "logging_steps": 5,
                "eval_steps": 0,
                "val_fraction": 0.05,
                "max_seq_len": 256,
                "gradient_checkpointing": False,
                "sample_prompts": 2,
            },
        },
    )
    curator.wait_job(run["job_id"], timeout=600)
    detail = curator("GET", f"/training-runs/{run['id']}")
    assert detail["metrics"] and detail["summary"]
    adapter_dir = tmp_path / "downloaded"
    for art in curator("GET", f"/training-runs/{run['id']}/artifacts"):
        if (
            art["path"].startswith("adapter/")
            or art["path"] in ("prompt_format.json",)
            or art["path"].startswith("tokenizer")
            or art["path"].endswith(".yaml")
        ):
            target = adapter_dir / art["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(curator("GET", f"/training-runs/{run['id']}/artifacts/{art['path']}"))
    from trainer.infer import generate, load_for_inference

    model, tokenizer, fmt = load_for_inference(adapter_dir, base_model=str(tiny_models_dir(stack_)))
    assert isinstance(generate(model, tokenizer, fmt, ["Name a primary colour."], max_new_tokens=8)[0], str)

    # At the end: nothing stuck, counters add up, nothing duplicated, no paid call repeated.
    jobs = curator("GET", "/jobs", params={"project_id": project["id"], "limit": 500})
    assert jobs and all(j["status"] == "succeeded" for j in jobs), [(j["kind"], j["status"]) for j in jobs]
    gen_records = []
    cursor = None
    while True:
        page = curator(
            "GET",
            f"/datasets/{ds}/records",
            params={"job_id": gen["id"], "limit": 500, **({"cursor": cursor} if cursor else {})},
        )
        gen_records += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    result = curator("GET", f"/jobs/{gen['id']}")["result"]
    assert len(gen_records) == result["records_kept"] + result["records_rejected"]
    contents = [
        (r["instruction"], r["input"], r["output"]) for r in gen_records if r["meta"]["generation"] == "kept"
    ]
    assert contents
    assert len(set(contents)) == len(contents)
    repeated = {h: c for h, c in teacher.stats()["completed_by_hash"].items() if c > 1}
    assert len(repeated) <= 16, f"answered calls asked again: {len(repeated)}"


def tiny_models_dir(stack_: Stack) -> Path:
    return Path(stack_.env["IF_MODELS_DIR"]) / "tiny-llama"

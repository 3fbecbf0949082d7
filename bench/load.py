"""50 concurrent API clients listing, editing and reviewing records for 60 s on PostgreSQL, while a
Self-Instruct generation job runs on a real worker against a teacher answering after 300 ms.

Usage: python bench/load.py [--clients 50] [--seconds 60] [--records 20000] [--think-ms 100]
Each client loops: list a page (50%), open a record and edit its output (25%), accept/reject it (25%),
with a think time between actions. Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1) if s else 0.0


async def client_loop(http, base, token, dataset_id, ids, deadline, think, stats) -> None:
    import httpx

    rng = random.Random()
    h = {"Authorization": f"Bearer {token}"}
    while time.perf_counter() < deadline:
        roll = rng.random()
        t0 = time.perf_counter()
        try:
            if roll < 0.5:
                params = {"limit": 50, "status": rng.choice(["pending", "accepted"])}
                r = await http.get(f"{base}/datasets/{dataset_id}/records", params=params, headers=h)
                kind = "list"
            else:
                rid = rng.choice(ids)
                r = await http.get(f"{base}/records/{rid}", headers=h)
                if r.status_code == 200:
                    rec = r.json()
                    body: dict = {"version": rec["version"]}
                    if roll < 0.75:
                        body["output"] = rec["output"][:2000] + " ✓"
                        kind = "edit"
                    else:
                        body.update(status=rng.choice(["accepted", "rejected"]))
                        kind = "review"
                    r = await http.patch(f"{base}/records/{rid}", json=body, headers=h)
                else:
                    kind = "get"
            ok = r.status_code < 400 or r.status_code == 409  # 409 = two clients edited one record: by design
            stats["lat"].append((time.perf_counter() - t0) * 1000)
            stats["by_kind"].setdefault(kind, []).append((time.perf_counter() - t0) * 1000)
            if r.status_code == 409:
                stats["conflicts"] += 1
            if not ok:
                stats["errors"] += 1
                stats["error_samples"].append(f"{r.status_code} {r.text[:120]}")
        except httpx.HTTPError as exc:
            stats["errors"] += 1
            stats["error_samples"].append(repr(exc)[:120])
        await asyncio.sleep(think * rng.uniform(0.5, 1.5))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--think-ms", type=float, default=100)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    import httpx
    import redis
    from sqlalchemy import create_engine, text

    db_name = "if_bench_load"
    url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{db_name}"
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {db_name}"))
        conn.execute(text(f"CREATE DATABASE {db_name}"))
    admin.dispose()
    redis.Redis.from_url(args.redis_url).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="if-load-"))

    from tests.fake_teacher import FakeTeacher
    from tests.procs import free_port, kill, service_env, start_worker, wait_http

    with FakeTeacher.start(latency_ms=300) as teacher:
        teachers = json.dumps(
            [{"name": "fake", "base_url": teacher.base_url, "model": "fake", "max_concurrency": 16}]
        )
        env = service_env(database_url=url, broker_url=args.redis_url, data_dir=tmp, IF_TEACHERS=teachers)
        os.environ.update({k: v for k, v in env.items() if k.startswith("IF_")})
        from app.auth import service as auth_service
        from app.datasets.models import Dataset
        from app.db import session_scope
        from app.imports.service import parse_file, write_records
        from app.jobs import service as jobs
        from app.migrate import upgrade
        from app.projects.models import Project, ProjectMember
        from app.records.models import Record

        upgrade(url)
        base_rows = json.loads((SHARED / "codealpaca" / "code_alpaca_2k.json").read_text())
        with session_scope() as db:
            user = auth_service.create_user(db=db, username="load", password="load-password", role="admin")
            project = Project(name="load")
            db.add(project)
            db.flush()
            db.add(ProjectMember(project_id=project.id, user_id=user.id, role="curator"))
            dataset = Dataset(project_id=project.id, name="load", language="en")
            db.add(dataset)
            db.flush()
            db.add_all(
                Record(
                    dataset_id=dataset.id,
                    instruction=f"{r['instruction']} #{i}",
                    input=r["input"],
                    output=r["output"],
                    source="import:alpaca",
                    gen_key=f"l{i}",
                )
                for i, r in enumerate(base_rows[i % len(base_rows)] for i in range(args.records))
            )
            seeds, _, fmt = parse_file(
                SHARED / "self-instruct" / "seed_tasks.jsonl",
                fmt="self_instruct",
                filename=None,
                skip_bad=False,
            )
            write_records(
                sessions=[db],
                dataset_id=dataset.id,
                records=seeds,
                fmt=fmt,
                key_prefix="seed",
                job_id=None,
                batch_size=1000,
            )
            _, token = auth_service.issue_token(db=db, user=user, name="load")
            dataset_id = dataset.id
            job = jobs.create_job(
                db=db,
                user=user,
                kind="self_instruct",
                project_id=None,
                dataset_id=dataset_id,
                params={"teacher": "fake", "target": 100_000, "batch_size": 16},
                enqueue=False,
            )
            job_id = job.id
            ids = [i for (i,) in db.execute(text("SELECT id FROM records ORDER BY id LIMIT 5000"))]

        port = free_port()
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--port",
                str(port),
                "--workers",
                str(args.api_workers),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=(tmp / "api.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = start_worker(env, tmp / "worker.log")
        base = f"http://127.0.0.1:{port}/api/v1"
        try:
            wait_http(f"{base}/health", api, tmp / "api.log")
            from celery import Celery

            Celery(broker=args.redis_url).send_task(
                "workers.tasks.run_job_task", args=[job_id], queue="default"
            )
            time.sleep(3)  # let the job start

            stats: dict = {"lat": [], "by_kind": {}, "errors": 0, "conflicts": 0, "error_samples": []}

            async def run() -> None:
                limits = httpx.Limits(max_connections=args.clients)
                async with httpx.AsyncClient(timeout=30, limits=limits) as http:
                    deadline = time.perf_counter() + args.seconds
                    await asyncio.gather(
                        *(
                            client_loop(
                                http, base, token, dataset_id, ids, deadline, args.think_ms / 1000, stats
                            )
                            for _ in range(args.clients)
                        )
                    )

            started = time.perf_counter()
            asyncio.run(run())
            elapsed = time.perf_counter() - started
            job_status = httpx.get(
                f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=60
            ).json()
        finally:
            kill(api)
            kill(worker)

    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "think_ms": args.think_ms,
        "requests": len(stats["lat"]),
        "requests_per_s": round(len(stats["lat"]) / elapsed, 1),
        "p50_ms": pct(stats["lat"], 0.5),
        "p95_ms": pct(stats["lat"], 0.95),
        "p99_ms": pct(stats["lat"], 0.99),
        "errors": stats["errors"],
        "edit_conflicts_409": stats["conflicts"],
        "by_kind_p99_ms": {k: pct(v, 0.99) for k, v in stats["by_kind"].items()},
        "generation_job": {
            "status": job_status["status"],
            "kept_tasks": job_status["counters"].get("kept_tasks"),
        },
        "machine": f"{os.cpu_count()} cores",
        "error_samples": stats["error_samples"][:5],
    }
    if stats["error_samples"]:
        print("errors:", stats["error_samples"][:5])
    print(
        f"{result['requests']} requests in {elapsed:.0f}s: {result['requests_per_s']}/s, p50 {result['p50_ms']} ms, "
        f"p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

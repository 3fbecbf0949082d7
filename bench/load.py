"""50 concurrent API clients listing, editing and reviewing records for 60 s on PostgreSQL, while a
Self-Instruct generation job runs on a real worker against a teacher answering after 300 ms.

Usage: python bench/load.py [--clients 50] [--seconds 60] [--think-ms 1000] [--warmup-s 5]
                            [--ramp-ms THINK] [--records 20000]
Each client loops: list a page (50%), open a record and edit its output (25%), open a record and
accept/reject it (25%), pausing 0.5-1.5x the think time between actions (the default, about one action a
second, is a fast human annotator; --think-ms 100 is a saturation test). Clients start spread over the
ramp; the first --warmup-s seconds are reported apart (warmup_*), then --seconds are measured. Errors
count in both. Prints figures; the last line is one JSON object.
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


async def client_loop(http, base, token, dataset_id, ids, measure_from, deadline, think, ramp, stats) -> None:
    import aiohttp

    rng = random.Random()
    h = {"Authorization": f"Bearer {token}"}
    # Clients arrive spread over the ramp, as people do: fifty first requests in the same millisecond
    # measure fifty TCP handshakes and a cold connection pool, not the service.
    await asyncio.sleep(rng.uniform(0, ramp))
    while time.perf_counter() < deadline:
        roll = rng.random()
        t0 = time.perf_counter()
        try:
            if roll < 0.5:
                params = {"limit": "50", "status": rng.choice(["pending", "accepted"])}
                async with http.get(f"{base}/datasets/{dataset_id}/records", params=params, headers=h) as r:
                    await r.read()
                    status, text = r.status, ""
                kind = "list"
            else:
                rid = rng.choice(ids)
                async with http.get(f"{base}/records/{rid}", headers=h) as r:
                    rec = await r.json() if r.status == 200 else None
                    status = r.status
                if rec is not None:
                    body: dict = {"version": rec["version"]}
                    if roll < 0.75:
                        body["output"] = rec["output"][:2000] + " ✓"
                        kind = "edit"
                    else:
                        body.update(status=rng.choice(["accepted", "rejected"]))
                        kind = "review"
                    async with http.patch(f"{base}/records/{rid}", json=body, headers=h) as r:
                        text = (await r.text())[:120]
                        status = r.status
                else:
                    kind, text = "get", ""
            ok = status < 400 or status == 409  # 409 = two clients edited one record: by design
            ms = (time.perf_counter() - t0) * 1000
            if t0 < measure_from:  # warm-up: reported apart, errors still count
                stats["warmup_lat"].append(ms)
            else:
                stats["lat"].append(ms)
                stats["by_kind"].setdefault(kind, []).append(ms)
            stats["timeline"].append((t0, ms, kind))
            if status == 409:
                stats["conflicts"] += 1
            if not ok:
                stats["errors"] += 1
                stats["error_samples"].append(f"{status} {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats["errors"] += 1
            stats["error_samples"].append(repr(exc)[:120])
        await asyncio.sleep(think * rng.uniform(0.5, 1.5))


def cpu_by_process(
    api: subprocess.Popen[bytes], worker: subprocess.Popen[bytes], teacher: subprocess.Popen[bytes]
) -> dict[str, float]:
    """CPU seconds so far: the API (all its processes), the worker (all), PostgreSQL (all), this process."""
    import psutil

    def tree(pid: int) -> float:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    postgres = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres") and proc.info["cpu_times"]:
            postgres += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    me = psutil.Process().cpu_times()
    return {
        "api": tree(api.pid),
        "worker": tree(worker.pid),
        "teacher": tree(teacher.pid),
        "postgres": postgres,
        "clients": me.user + me.system,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument(
        "--think-ms", type=float, default=1000, help="mean pause between one client's actions (0.5x-1.5x)"
    )
    parser.add_argument(
        "--warmup-s", type=float, default=5, help="seconds of load before measuring (reported apart)"
    )
    parser.add_argument(
        "--ramp-ms", type=float, default=None, help="clients start spread over this window (default: think)"
    )
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    ramp_ms = args.think_ms if args.ramp_ms is None else args.ramp_ms

    import httpx
    import redis
    from sqlalchemy import create_engine, text

    db_name = "if_bench_load"
    url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{db_name}"
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {db_name}"))
    admin.dispose()
    redis.Redis.from_url(args.redis_url).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="if-load-"))

    from tests.fake_teacher import teacher_process
    from tests.procs import free_port, kill, service_env, start_worker, wait_http

    with teacher_process(latency_ms=300) as (teacher_url, teacher_proc):
        teachers = json.dumps(
            [{"name": "fake", "base_url": teacher_url, "model": "fake", "max_concurrency": 16}]
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

            stats: dict = {
                "timeline": [],
                "warmup_lat": [],
                "lat": [],
                "by_kind": {},
                "errors": 0,
                "conflicts": 0,
                "error_samples": [],
            }

            marks: dict = {}

            async def run() -> None:
                import aiohttp

                # aiohttp, not httpx: the clients share two cores with everything they measure, and httpx
                # costs ~4x the CPU per request (it made the load generator as busy as the API).
                connector = aiohttp.TCPConnector(limit=args.clients)
                timeout = aiohttp.ClientTimeout(total=30)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                    marks["start"] = time.perf_counter()
                    marks["measure_from"] = marks["start"] + args.warmup_s
                    deadline = marks["measure_from"] + args.seconds

                    async def cpu_mark() -> None:
                        await asyncio.sleep(args.warmup_s)
                        marks["cpu_before"] = cpu_by_process(api, worker, teacher_proc)

                    await asyncio.gather(
                        cpu_mark(),
                        *(
                            client_loop(
                                http,
                                base,
                                token,
                                dataset_id,
                                ids,
                                marks["measure_from"],
                                deadline,
                                args.think_ms / 1000,
                                ramp_ms / 1000,
                                stats,
                            )
                            for _ in range(args.clients)
                        ),
                    )

            asyncio.run(run())
            started = marks["measure_from"]
            elapsed = time.perf_counter() - started
            cpu_used = {
                k: round(v - marks["cpu_before"].get(k, 0.0), 1)
                for k, v in cpu_by_process(api, worker, teacher_proc).items()
            }
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
        "ramp_ms": ramp_ms,
        # The first seconds (new connections, cold pools and caches) are measured apart.
        "warmup_s": args.warmup_s,
        "warmup_requests": len(stats["warmup_lat"]),
        "warmup_p99_ms": pct(stats["warmup_lat"], 0.99),
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
        # CPU seconds each part used during the run (the bench process is the clients).
        "cpu_s": cpu_used,
        "error_samples": stats["error_samples"][:5],
    }
    if os.environ.get("LOAD_DEBUG"):
        for t, ms, kind in sorted(stats["timeline"], key=lambda x: -x[1])[:40]:
            print(f"slow: t={t - started:6.2f}s {ms:7.1f} ms {kind}")
    if stats["error_samples"]:
        print("errors:", stats["error_samples"][:5])
    print(
        f"{result['requests']} requests in {elapsed:.0f}s: {result['requests_per_s']}/s, p50 {result['p50_ms']} ms, "
        f"p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Import N records into PostgreSQL through the import job's own code path, then time the records list.

Usage: python bench/import_records.py [--n 1000000] [--pg-admin-url URL]
Prints its figures; the last line is one JSON object:
  {"records": N, "import_records_per_s": ..., "copy_records_per_s": ..., "ratio_to_copy": ...,
   "import_max_rss_mb": ..., "loadavg": [...], ...}

The baseline is the database's own speed, measured in the same run on the same machine: a plain binary
``COPY`` (psycopg 3, ``FORMAT BINARY``, rows already built in memory) of the same rows into a bare table
with the same columns and indexes as ``records`` (``LIKE records INCLUDING ALL``: no foreign keys, no
triggers), run just before and just after our import (their mean is the baseline). ``ratio_to_copy`` is
our import's records/s (file upload parsed, validated and written by the import job's own code) over
that; load from others on a shared machine then weighs on both sides alike (``loadavg`` is reported).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def real_records() -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for rel in (
        "codealpaca/code_alpaca_2k.json",
        "alpacadatacleaned/gsm_8k_train.json",
        "alpaca-chinese-dataset/zh-data-part-00.json",
    ):
        for item in json.loads((SHARED / rel).read_text()):
            out.append(
                {
                    "instruction": item["instruction"],
                    "input": item.get("input", ""),
                    "output": item.get("output", ""),
                }
            )
    return out


def _bare_rows(
    n: int, base: list[dict[str, str]], *, dataset_id: int, job_id: int
) -> list[tuple[object, ...]]:
    """The rows the import writes for the generated file, as tuples in COPY_COLUMNS order."""
    from app.base import utcnow

    now = utcnow()
    rows: list[tuple[object, ...]] = []
    for i in range(n):
        r = base[i % len(base)]
        rows.append(
            (
                dataset_id,
                f"{r['instruction']} #{i}",
                r["input"],
                r["output"],
                None,
                None,
                "pending",
                "import:alpaca",
                None,
                None,
                f"imp:j{job_id}:{i + 1}",
                job_id,
                {},
                [],
                1,
                False,
                now,
                now,
            )
        )
    return rows


COPY_COLUMNS = (
    "dataset_id, instruction, input, output, system, messages, status, source, label, is_classification, "
    "gen_key, job_id, meta, tags, version, flagged, created_at, updated_at"
)
COPY_TYPES = [
    "int8",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "varchar",
    "varchar",
    "varchar",
    "bool",
    "varchar",
    "int8",
    "jsonb",
    "jsonb",
    "int4",
    "bool",
    "timestamptz",
    "timestamptz",
]


def copy_baseline(url: str, rows: list[tuple[object, ...]]) -> float:
    """Seconds a plain binary COPY of `rows` takes into a bare copy of `records` (same indexes), committed."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_baseline")
        conn.execute("CREATE TABLE copy_baseline (LIKE records INCLUDING ALL)")
        conn.commit()
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY copy_baseline ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        seconds = time.perf_counter() - started
        count = conn.execute("SELECT count(*) FROM copy_baseline").fetchone()
        assert count is not None and count[0] == len(rows), count
        conn.execute("DROP TABLE copy_baseline")
        conn.commit()
    return seconds


def baseline_in_child(url: str, n: int, *, dataset_id: int, job_id: int) -> float:
    """copy_baseline in a forked process: its million rows in memory must not count as the import's."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(_baseline, url, n, dataset_id, job_id).result()


def _baseline(url: str, n: int, dataset_id: int, job_id: int) -> float:
    return copy_baseline(url, _bare_rows(n, real_records(), dataset_id=dataset_id, job_id=job_id))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    db_name = "if_bench_import"
    url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{db_name}"
    tmp = Path(tempfile.mkdtemp(prefix="if-bench-"))
    os.environ.update(
        IF_DATABASE_URL=url,
        IF_DATA_DIR=str(tmp),
        IF_BROKER_URL="memory://",
        IF_SECRET_KEY="bench-" + "k" * 32,
        IF_IMPORT_BATCH_SIZE=os.environ.get("IF_IMPORT_BATCH_SIZE", "10000"),
    )

    from sqlalchemy import create_engine, text

    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {db_name}"))
        conn.execute(text(f"CREATE DATABASE {db_name}"))
    admin.dispose()

    from fastapi.testclient import TestClient

    from app.auth import service as auth_service
    from app.db import get_engine, session_scope
    from app.imports.service import new_upload_path
    from app.jobs import service as jobs
    from app.jobs.models import Job
    from app.main import create_app
    from app.migrate import upgrade
    from app.records.service import encode_cursor
    from workers.runner import run_job

    upgrade(url)
    base = real_records()
    upload = new_upload_path(".jsonl")
    with upload.open("w") as fh:
        for i in range(args.n):
            r = base[i % len(base)]
            fh.write(json.dumps({**r, "instruction": f"{r['instruction']} #{i}"}, ensure_ascii=False) + "\n")
    size_mb = upload.stat().st_size / 1e6

    with session_scope() as db:
        from app.datasets.models import Dataset
        from app.projects.models import Project, ProjectMember

        user = auth_service.create_user(db=db, username="bench", password="bench-password", role="curator")
        project = Project(name="bench")
        db.add(project)
        db.flush()
        db.add(ProjectMember(project_id=project.id, user_id=user.id, role="curator"))
        dataset = Dataset(project_id=project.id, name="bench", language="en")
        db.add(dataset)
        db.flush()
        job = jobs.create_job(
            db=db,
            user=user,
            kind="import",
            project_id=None,
            dataset_id=dataset.id,
            params={"upload": upload.name, "format": "alpaca"},
            enqueue=False,
        )
        _, token = auth_service.issue_token(db=db, user=user, name="bench")
        dataset_id, job_id = dataset.id, job.id

    # The baseline runs just before and just after our import, and the figure is their mean: on a machine
    # shared with others, load comes and goes, and this way it weighs on both sides alike.
    before_s = baseline_in_child(url, args.n, dataset_id=dataset_id, job_id=job_id)
    started = time.perf_counter()
    status = run_job(job_id)
    import_s = time.perf_counter() - started
    # The process's peak so far is the import's (the file was written line by line): memory stays bounded.
    import_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with session_scope() as db:
        row = db.get(Job, job_id)
        assert status == "succeeded" and row is not None, (status, row and row.error)
        imported = int(row.result["imported"])
    assert imported == args.n, imported

    after_s = baseline_in_child(url, args.n, dataset_id=dataset_id, job_id=job_id)
    copy_s = (before_s + after_s) / 2

    with get_engine().begin() as conn:  # a realistic mix of statuses for the filtered listing
        conn.execute(
            text("UPDATE records SET status = 'accepted' WHERE dataset_id = :d AND id % 3 = 0"),
            {"d": dataset_id},
        )
        conn.execute(text("ANALYZE records"))
        max_id = conn.execute(text("SELECT max(id) FROM records")).scalar_one()

    client = TestClient(create_app())
    headers = {"Authorization": f"Bearer {token}"}
    url_list = f"/api/v1/datasets/{dataset_id}/records"
    deep = encode_cursor(int(max_id) - 2000, False)
    timings: dict[str, list[float]] = {"first": [], "deep": []}
    for _ in range(5):
        client.get(url_list, params={"status": "accepted"}, headers=headers)
    for i in range(args.requests):
        kind = "first" if i % 2 == 0 else "deep"
        params = {"status": "accepted", "limit": 50} | ({"cursor": deep} if kind == "deep" else {})
        t0 = time.perf_counter()
        resp = client.get(url_list, params=params, headers=headers)
        timings[kind].append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200 and resp.json()["items"], resp.text
    all_ms = sorted(timings["first"] + timings["deep"])

    def pct(values: list[float], q: float) -> float:
        return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 2)

    result = {
        "records": args.n,
        "file_mb": round(size_mb, 1),
        "import_s": round(import_s, 2),
        "import_records_per_s": round(args.n / import_s),
        "import_max_rss_mb": round(import_rss_mb),
        "copy_s": round(copy_s, 2),
        "copy_s_before_after": [round(before_s, 2), round(after_s, 2)],
        "copy_records_per_s": round(args.n / copy_s),
        "ratio_to_copy": round(copy_s / import_s, 3),
        "list_p50_ms": pct(all_ms, 0.5),
        "list_p95_ms": pct(all_ms, 0.95),
        "list_first_page_p95_ms": pct(timings["first"], 0.95),
        "list_deep_page_p95_ms": pct(timings["deep"], 0.95),
        "machine": f"{os.cpu_count()} cores",
        "mean_ms": round(statistics.mean(all_ms), 2),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(
        f"binary COPY baseline: {copy_s:.1f}s ({args.n / copy_s:,.0f} records/s); ours / COPY = "
        f"{result['ratio_to_copy']}"
    )
    print(
        f"imported {args.n} records ({size_mb:.0f} MB) in {import_s:.1f}s; list p50 {result['list_p50_ms']} ms, "
        f"p95 {result['list_p95_ms']} ms"
    )
    print(json.dumps(result))
    random.seed(0)


if __name__ == "__main__":
    main()

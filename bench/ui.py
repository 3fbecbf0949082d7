"""Review UI speed on a 100,000-record dataset in PostgreSQL, served by uvicorn.

Measures, from a client on the same machine (so each figure is server time plus a localhost round trip):
- the review page (GET /ui/datasets/{id}/review: HTML with the first records and their context),
- an accept action (POST /api/v1/review/records/{id}/decision, with the prefetch refill the page asks for),
- the dataset page (stats as SVG over all 100k records): the first view (computes the stats), later views (the
  stats cached until the records change) and a view right after an accept (computes them again), and a deep
  keyset page of the records browser,
- requests per review action: the review page's protocol replayed for N actions, and, when Debian's
  chromium is installed, the real page driven by the keyboard in headless Chromium.

Usage: python bench/ui.py [--records 100000] [--samples 300]
Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
PASSWORD = "bench-password"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1) if s else 0.0


def texts() -> list[tuple[str, str, str]]:
    """Real instruction data (Self-Instruct seeds, GSM8K from alpaca-cleaned), cycled to the size wanted."""
    out: list[tuple[str, str, str]] = []
    seeds = SHARED / "self-instruct" / "seed_tasks.jsonl"
    if seeds.is_file():
        for line in seeds.read_text(encoding="utf-8").splitlines():
            t = json.loads(line)
            inst = t["instances"][0]
            out.append((t["instruction"], inst.get("input", ""), inst.get("output", "")))
    gsm = SHARED / "alpacadatacleaned" / "gsm_8k_train.json"
    if gsm.is_file():
        for r in json.loads(gsm.read_text(encoding="utf-8")):
            out.append((r.get("instruction", ""), r.get("input", ""), r.get("output", "")))
    return out or [(f"Describe item {i}.", "", f"Item {i}.") for i in range(1000)]


def build(url: str, n: int) -> dict[str, Any]:
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from app.auth import service as auth_service
    from app.datasets.models import Dataset
    from app.db import make_engine
    from app.projects.models import Project, ProjectMember
    from app.records.models import Record

    engine = make_engine(url)
    rng = random.Random(0)
    corpus = texts()
    with Session(engine) as db:
        admin = auth_service.create_user(db=db, username="bench-admin", password=PASSWORD, role="admin")
        annotator = auth_service.create_user(db=db, username="bench-ann", password=PASSWORD, role="annotator")
        project = Project(name="bench", description="")
        db.add(project)
        db.flush()
        db.add(ProjectMember(project_id=project.id, user_id=annotator.id, role="annotator"))
        ds = Dataset(
            project_id=project.id, name="bench-100k", language="en", guidelines="Accept correct answers."
        )
        db.add(ds)
        db.commit()
        ids = {"dataset": ds.id, "admin": admin.username, "annotator": annotator.username}
    t0 = time.perf_counter()
    batch: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for i in range(n):
            inst, inp, out = corpus[i % len(corpus)]
            status = "pending" if i % 10 else rng.choice(["accepted", "rejected", "filtered"])
            row = {
                "dataset_id": ids["dataset"],
                "instruction": f"{inst} ({i // len(corpus)})" if i >= len(corpus) else inst,
                "input": inp,
                "output": out,
                "status": status,
                "source": rng.choice(["seed", "self_instruct", "evol:deepening", "import:alpaca"]),
                "nn_score": round(rng.random(), 3) if i % 3 == 0 else None,
                "nn_record_id": rng.randrange(1, i + 1) if i % 3 == 0 and i > 0 else None,
                "judge_score": rng.choice([None, 2.0, 3.5, 4.5, 5.0]),
                "meta": {},
                "tags": [],
                "version": 1,
                "flagged": False,
            }
            batch.append(row)
            if len(batch) == 5000:
                conn.execute(insert(Record), batch)
                batch = []
        if batch:
            conn.execute(insert(Record), batch)
    print(f"inserted {n} records in {time.perf_counter() - t0:.1f} s")
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("ANALYZE records"))
    engine.dispose()
    return ids


def login(http: Any, base: str, username: str) -> str:
    page = http.get(f"{base}/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    resp = http.post(
        f"{base}/login", data={"username": username, "password": PASSWORD, "csrf_token": token.group(1)}
    )
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', resp.text)
    assert csrf is not None, resp.text[:500]
    return csrf.group(1)


def page_items(html: str) -> list[dict[str, Any]]:
    match = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', html, re.S)
    assert match is not None
    return list(json.loads(match.group(1))["items"])


def replay(
    http: Any, base: str, csrf: str, ds: int, actions: int, prefetch: int = 5
) -> tuple[int, list[float]]:
    """The review page's protocol: one decision per action, its reply refilling the buffer."""
    html = http.get(f"{base}/ui/datasets/{ds}/review").text
    buf = page_items(html)
    requests, lat = 0, []
    max_id = max(i["id"] for i in buf)
    for _ in range(actions):
        if not buf:
            resp = http.get(f"{base}/api/v1/review/datasets/{ds}/queue", params={"after_id": max_id})
            requests += 1
            buf = resp.json()["items"]
            if not buf:
                break
        item = buf.pop(0)
        want = max(0, prefetch - len(buf))
        t0 = time.perf_counter()
        resp = http.post(
            f"{base}/api/v1/review/records/{item['id']}/decision",
            json={"action": "accept", "version": item["version"], "prefetch_after": max_id, "prefetch": want},
            headers={"X-CSRF-Token": csrf},
        )
        lat.append((time.perf_counter() - t0) * 1000)
        requests += 1
        resp.raise_for_status()
        nxt = resp.json()["next"]
        buf += nxt
        if nxt:
            max_id = max(max_id, *(i["id"] for i in nxt))
    return requests, lat


def browser_requests(base: str, ds: int, username: str, actions: int) -> float | None:
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not chromium.exists():
        return None
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(chromium),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = b.new_context(base_url=base).new_page()
        page.goto("/login")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url("**/ui")
        page.goto(f"/ui/datasets/{ds}/review")
        page.wait_for_selector("[data-role=rid]:has-text('#')")
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if "/api/" in r.url else None)
        for _ in range(actions):
            page.keyboard.press("a")
            page.wait_for_timeout(150)  # a fast annotator: ~7 decisions a second
        page.wait_for_function(
            f"document.querySelector('[data-role=progress]').textContent.startsWith('{actions} reviewed')"
        )
        b.close()
    return round(len(calls) / actions, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "IF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--nn-index",
        action="store_true",
        help="Create an index on records (dataset_id, nn_record_id) first: the review page then also shows the "
        "records that found each one as their nearest neighbour.",
    )
    parser.add_argument(
        "--stats-samples",
        type=int,
        default=30,
        help="Views of the dataset page (the first computes the stats; the rest find them cached).",
    )
    args = parser.parse_args()

    import httpx
    from sqlalchemy import create_engine, text

    db_name = f"if_bench_ui_{os.getpid()}"
    url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{db_name}"
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    from tests.procs import free_port, kill, service_env, start_api

    api = None
    try:
        from app.migrate import upgrade

        upgrade(url)
        ids = build(url, args.records)
        if args.nn_index:
            eng = create_engine(url)
            with eng.begin() as conn:
                conn.execute(
                    text(
                        "CREATE INDEX IF NOT EXISTS ix_records_dataset_nn_record ON records (dataset_id, nn_record_id)"
                    )
                )
            eng.dispose()
        tmp = Path(tempfile.mkdtemp(prefix="if-bench-ui-"))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = start_api(
            service_env(database_url=url, broker_url="memory://", data_dir=tmp), tmp / "api.log", port
        )
        ds = ids["dataset"]
        with httpx.Client(timeout=60, follow_redirects=True) as http:
            csrf = login(http, base, ids["annotator"])
            for _ in range(10):  # warm-up: connections, caches, query plans
                http.get(f"{base}/ui/datasets/{ds}/review")
            page_ms: list[float] = []
            accept_ms: list[float] = []
            for _ in range(args.samples):
                t0 = time.perf_counter()
                resp = http.get(f"{base}/ui/datasets/{ds}/review")
                page_ms.append((time.perf_counter() - t0) * 1000)
                resp.raise_for_status()
                _, lat = replay(http, base, csrf, ds, actions=1)
                accept_ms += lat
            requests, lat = replay(http, base, csrf, ds, actions=args.samples)
            accept_ms += lat
            per_action = round(requests / args.samples, 3)
        with httpx.Client(timeout=120, follow_redirects=True) as http:
            admin_csrf = login(http, base, ids["admin"])
            # The page's stats are cached until the dataset's records change (app/datasets/freshness.py):
            # the first view computes them, later ones read them; a change makes the next view compute again.
            stats_ms, first_ms, changed_ms = [], [], []
            for _ in range(args.stats_samples):
                t0 = time.perf_counter()
                http.get(f"{base}/ui/datasets/{ds}").raise_for_status()
                stats_ms.append((time.perf_counter() - t0) * 1000)
            first_ms.append(stats_ms.pop(0))
            for _ in range(3):
                _, lat = replay(http, base, admin_csrf, ds, actions=1)  # one accept: the figures change
                t0 = time.perf_counter()
                http.get(f"{base}/ui/datasets/{ds}").raise_for_status()
                changed_ms.append((time.perf_counter() - t0) * 1000)
            deep_ms = []
            cursor = None
            for _ in range(30):
                t0 = time.perf_counter()
                resp = http.get(
                    f"{base}/ui/datasets/{ds}/records", params={"cursor": cursor} if cursor else {}
                )
                deep_ms.append((time.perf_counter() - t0) * 1000)
                m = re.search(r"cursor=([A-Za-z0-9_\-]+)", resp.text)
                cursor = m.group(1) if m else None
        browser = browser_requests(base, ds, ids["annotator"], actions=30)
    finally:
        if api is not None:
            kill(api)
        with admin.connect() as conn:
            conn.execute(
                text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db_name}'")
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}"'))
        admin.dispose()

    result = {
        "records": args.records,
        "review_page_p50_ms": pct(page_ms, 0.5),
        "review_page_p95_ms": pct(page_ms, 0.95),
        "accept_p50_ms": pct(accept_ms, 0.5),
        "accept_p95_ms": pct(accept_ms, 0.95),
        "requests_per_action_protocol": per_action,
        "requests_per_action_browser": browser,
        "dataset_stats_page_p50_ms": pct(stats_ms, 0.5),
        "dataset_stats_page_p95_ms": pct(stats_ms, 0.95),
        "dataset_stats_page_first_view_ms": pct(first_ms, 0.5),
        "dataset_stats_page_after_a_change_p50_ms": pct(changed_ms, 0.5),
        "records_page_p95_ms": pct(deep_ms, 0.95),
        "samples": args.samples,
        "nn_index": args.nn_index,
    }
    print(f"review page       p50 {result['review_page_p50_ms']} ms   p95 {result['review_page_p95_ms']} ms")
    print(f"accept action     p50 {result['accept_p50_ms']} ms   p95 {result['accept_p95_ms']} ms")
    print(f"requests/action   protocol {per_action}   browser {browser}")
    print(
        f"dataset page (stats over {args.records:,} records) p50 {result['dataset_stats_page_p50_ms']} ms   "
        f"p95 {result['dataset_stats_page_p95_ms']} ms   first view {result['dataset_stats_page_first_view_ms']} ms   "
        f"after a change {result['dataset_stats_page_after_a_change_p50_ms']} ms"
    )
    print(f"records browser (30 keyset pages deep) p95 {result['records_page_p95_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

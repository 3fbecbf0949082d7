"""What the review page's "n of N" costs on a large queue, in PostgreSQL (migrated schema, real indexes).

Times, in one process and interleaved so that a busy machine weighs on each alike:
- `opening_items`: the rest of what the review page loads (the first records and their context),
- the position as the page counts it (`queue_position`, stopping at POSITION_CAP),
- the same count without the cap (every queued record read), for comparison,
- `SELECT 1`: one round trip, the floor under every figure.

Usage: python bench/review_position.py [--records 100000] [--samples 40]
Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(samples: list[float], fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    samples.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "IF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()

    from sqlalchemy import create_engine, insert, select, text
    from sqlalchemy.orm import Session

    from app.base import utcnow
    from app.migrate import upgrade
    from app.records.models import Record
    from app.review import service as review
    from tests.factories import make_dataset, make_project, make_user

    db_name = f"if_bench_position_{os.getpid()}"
    url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{db_name}"
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    engine = create_engine(url)
    try:
        upgrade(url)
        with Session(engine) as db:
            user = make_user(db, "annotator")
            ds = make_dataset(db, make_project(db, (user, "annotator")))
            db.commit()
            rows = [
                {
                    "dataset_id": ds.id,
                    "instruction": f"Task {i}: explain something in a few sentences.",
                    "output": "An answer. " * 20,
                    "status": "accepted" if i % 10 == 0 else "pending",  # 90 % pending, as bench/ui.py
                }
                for i in range(args.records)
            ]
            for start in range(0, len(rows), 5000):
                db.execute(insert(Record), rows[start : start + 5000])
            db.commit()
            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))
            page, position, full, floor = [], [], [], []  # type: list[float], list[float], list[float], list[float]
            pos = None
            for _ in range(args.samples):
                timed(
                    page,
                    lambda: review.opening_items(db=db, user=user, dataset_id=ds.id, record_id=None, limit=5),
                )
                pos = timed(
                    position,
                    lambda: review.queue_position(db=db, user=user, dataset_id=ds.id, record_id=None),
                )
                ids = review._in_queue(
                    select(Record.id), user=user, dataset_id=ds.id, assigned=False, now=utcnow()
                )
                timed(full, partial(review._count_upto, db, ids, args.records + 1))
                timed(floor, lambda: db.execute(text("SELECT 1")))
                db.commit()
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
    result = {
        "records": args.records,
        "samples": args.samples,
        "opening_items_p50_ms": round(statistics.median(page), 1),
        "position_p50_ms": round(statistics.median(position), 1),
        "uncapped_count_p50_ms": round(statistics.median(full), 1),
        "select_1_p50_ms": round(statistics.median(floor), 1),
        "position": pos.model_dump() if pos is not None else None,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }
    print(f"opening items (rest of the page)  p50 {result['opening_items_p50_ms']} ms")
    print(f"position, capped                   p50 {result['position_p50_ms']} ms   {result['position']}")
    print(f"the same count without the cap     p50 {result['uncapped_count_p50_ms']} ms")
    print(f"SELECT 1 (one round trip)          p50 {result['select_1_p50_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

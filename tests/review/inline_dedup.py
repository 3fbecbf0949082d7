"""Run the real dedup job handler on the test's own session, so nearest-neighbour figures in tests are the
ones the job stores (score, nearest record, meta["dedup"]) rather than hand-made values."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.curation.jobs import run_dedup_job
from app.datasets.models import Dataset
from app.records.models import Record

# Dedup at 0.7 (the default cutoff), in id order, gives:
#   SEA        kept, nothing before it:                              0.0, nearest None
#   DOG        kept, true max 0.375 to SEA (not searched below 0.7):  0.0, nearest None
#   NIGHT      kept, scored 0.632 to SEA on the way (below 0.7):      0.632, nearest SEA
#   GRAVITY    kept, no overlap worth scoring:                        0.0, nearest None
#   TODAY      filtered, 0.947 to SEA (above the cutoff, exact):      0.947, nearest SEA
#   SEA_UPPER  filtered as an exact duplicate of SEA:                 1.0, nearest SEA
SEA = "Write a poem about the sea and the sky"
DOG = "Write a short story about a dog"
NIGHT = "Write a poem about the sea at night in winter"
GRAVITY = "Explain gravity to a child"
TODAY = "Write a poem about the sea and the sky today"
SEA_UPPER = "WRITE a poem about the sea and the sky"
TEXTS = (SEA, DOG, NIGHT, GRAVITY, TODAY, SEA_UPPER)


@dataclass
class InlineJob:
    """The parts of app.jobs.context.JobContext the dedup handler uses, on one (rolled back) session."""

    db: Session
    dataset_id: int
    params: dict[str, Any]
    job_id: int = 0
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> int:
        return self.dataset_id

    @contextmanager
    def session(self) -> Iterator[Session]:
        yield self.db

    def progress(
        self, done: int, total: int | None = None, *, counters: dict[str, Any] | None = None
    ) -> None:
        pass

    def set_result(self, result: dict[str, Any]) -> None:
        self.result = result


def run_dedup(db: Session, dataset: Dataset, **params: Any) -> dict[str, Any]:
    job = InlineJob(db, dataset.id, params)
    run_dedup_job(job)
    db.expire_all()  # the job writes with bulk UPDATEs behind the ORM's back
    return job.result


def deduped_records(db: Session, dataset: Dataset) -> dict[str, Record]:
    """The six records above deduped at 0.7, plus one outside the job's scope (rejected): never compared."""
    rows = [Record(dataset_id=dataset.id, instruction=t, output="An answer.", source="seed") for t in TEXTS]
    rows.append(Record(dataset_id=dataset.id, instruction="Name a colour", output="Blue.", status="rejected"))
    db.add_all(rows)
    db.flush()
    result = run_dedup(db, dataset, threshold=0.7)
    counts = {k: result.get(k) for k in ("scanned", "kept", "exact_dup", "rouge_dup")}
    assert counts == {"scanned": 6, "kept": 4, "exact_dup": 1, "rouge_dup": 1}, result
    names = ("sea", "dog", "night", "gravity", "today", "sea_upper", "outside")
    return dict(zip(names, rows, strict=True))

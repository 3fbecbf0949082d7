"""Snapshots: freeze record versions, compute stats, export. Training and export only read snapshots."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import and_, insert, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.config import get_settings
from app.datasets.service import require_dataset
from app.db import get_or_404
from app.errors import Conflict, Invalid, not_found_as
from app.pipeline import formats
from app.records.models import Record
from app.records.schemas import RecordFilter
from app.records.service import filter_clauses
from app.review.service import generation_cutoffs, nn_finding, none_label
from app.snapshots.models import Snapshot, SnapshotItem

LENGTH_BUCKETS = (0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SCORE_BUCKETS = tuple(round(i / 10, 1) for i in range(11))
BATCH = 2000


def record_content(r: Record) -> dict[str, Any]:
    """What a snapshot keeps of a record: enough to export, train and trace it back."""
    return {
        "instruction": r.instruction,
        "input": r.input,
        "output": r.output,
        "system": r.system,
        "messages": r.messages,
        "status": r.status,
        "reason": r.reason,
        "source": r.source,
        "label": r.label,
        "tags": list(r.tags or []),
        "rating": r.rating,
        "judge_score": r.judge_score,
        "nn_score": r.nn_score,
        "parent_id": r.parent_id,
        "teacher_model": r.teacher_model,
    }


def _bucket(value: float, edges: Sequence[float]) -> str:
    label = f"{edges[0]}"
    for edge in edges:
        if value >= edge:
            label = f"{edge}"
    return label


def _length(content: dict[str, Any]) -> tuple[int, int]:
    if content.get("messages"):
        turns = content["messages"]
        user = sum(len(m["content"]) for m in turns if m["role"] == "user")
        assistant = sum(len(m["content"]) for m in turns if m["role"] == "assistant")
        return user, assistant
    return len(content["instruction"]) + len(content["input"]), len(content["output"])


def compute_stats(
    contents: Iterator[dict[str, Any]], below_cutoff: Mapping[int, float | None] | None = None
) -> dict[str, Any]:
    """Counts and histograms of a snapshot's contents.

    `below_cutoff` maps the records whose stored nearest-neighbour figure is no score (compared, no
    neighbour at or above the dedup cutoff: `app.review.service.nn_finding`) to that cutoff; they make the
    "none ≥ 0.70" bucket of `nn_rouge_hist` rather than "0.0". Without it, only a stored 0.0 is known to be
    such a record."""
    below = below_cutoff or {}
    by_status: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    by_label: Counter[str] = Counter()
    prompt_len: Counter[str] = Counter()
    response_len: Counter[str] = Counter()
    nn: Counter[str] = Counter()
    nn_none: Counter[float | None] = Counter()
    nn_unseen = 0
    n = 0
    for c in contents:
        n += 1
        by_status[c["status"]] += 1
        by_source[c["source"]] += 1
        if c.get("reason"):
            by_reason[c["reason"]] += 1
        if c.get("label"):
            by_label[c["label"]] += 1
        p, r = _length(c)
        prompt_len[_bucket(p, LENGTH_BUCKETS)] += 1
        response_len[_bucket(r, LENGTH_BUCKETS)] += 1
        score = c.get("nn_score")
        if score is None:
            nn_unseen += 1
        elif c.get("record_id") in below or float(score) <= 0:
            nn_none[below.get(c.get("record_id", -1))] += 1
        else:
            nn[_bucket(float(score), SCORE_BUCKETS)] += 1
    none_key, none_records = none_label(set(nn_none)), sum(nn_none.values())
    if none_records:
        nn = Counter({none_key: none_records, **nn})
    return {
        "records": n,
        "by_status": dict(by_status),
        "by_source": dict(by_source),
        "by_reason": dict(by_reason),
        "by_label": dict(by_label.most_common(50)),
        "prompt_chars_hist": dict(prompt_len),
        "response_chars_hist": dict(response_len),
        "nn_rouge_hist": dict(nn),
        "nn_rouge_none": {
            "label": none_key,
            "records": none_records,
            "cutoffs": sorted(c for c in nn_none if c is not None),
        },
        "nn_rouge_not_compared": nn_unseen,
    }


def create_snapshot(
    *, db: Session, user: User, dataset_id: int, name: str, description: str, flt: RecordFilter
) -> Snapshot:
    dataset = require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    if db.scalar(select(Snapshot.id).where(Snapshot.dataset_id == dataset_id, Snapshot.name == name)):
        raise Conflict(f"snapshot {name!r} exists for dataset {dataset_id}", field="name")
    snap = Snapshot(
        dataset_id=dataset_id,
        name=name,
        description=description,
        filter=flt.model_dump(exclude_none=True),
        content_hash="",
        created_by=user.id,
    )
    db.add(snap)
    db.flush()
    digest = hashlib.sha256()
    last_id = 0
    count = 0
    below_cutoff: dict[int, float | None] = {}
    job_cutoffs = generation_cutoffs(db, dataset_id=dataset_id)
    clauses = filter_clauses(dataset_id, flt)
    while True:
        rows = db.scalars(
            select(Record).where(and_(*clauses), Record.id > last_id).order_by(Record.id).limit(BATCH)
        ).all()
        if not rows:
            break
        items = []
        for r in rows:
            nn_status, nn_cutoff = nn_finding(r, job_cutoffs)
            if nn_status == "below_cutoff":
                below_cutoff[r.id] = nn_cutoff
            content = record_content(r)
            items.append(
                {"snapshot_id": snap.id, "record_id": r.id, "record_version": r.version, "content": content}
            )
            digest.update(json.dumps([r.id, r.version, content], sort_keys=True, ensure_ascii=False).encode())
        db.execute(insert(SnapshotItem), items)
        count += len(rows)
        last_id = rows[-1].id
    if count == 0:
        raise Invalid("no records match the snapshot filter", field="filter")
    snap.content_hash = digest.hexdigest()
    snap.record_count = count
    stats = compute_stats(iter_contents(db, snap.id), below_cutoff)
    stats["max_rouge_l_hist"] = rouge_histogram(db, snap.id, count)
    stats["max_rouge_l_cutoff"] = ROUGE_FLOOR
    snap.stats = stats
    audit.record(
        db=db,
        user_id=user.id,
        action="snapshot.create",
        entity_type="snapshot",
        entity_id=snap.id,
        project_id=dataset.project_id,
        detail={"records": count, "hash": snap.content_hash},
    )
    db.flush()
    return snap


ROUGE_STATS_MAX_RECORDS = 50_000
ROUGE_FLOOR = 0.3


def rouge_histogram(db: Session, snapshot_id: int, count: int) -> dict[str, Any]:
    """Histogram of each record's max ROUGE-L (instruction) to the rest of the snapshot.

    Exact for scores >= 0.3 (`max_rouge_l_cutoff`): a record whose max is lower is counted as
    "none ≥ 0.30", never at the partial figure the pruned search met (often 0.0). Skipped above 50,000
    records, where the nearest-neighbour scores stored by the dedup job (`nn_rouge_hist`) stand in.
    """
    if count > ROUGE_STATS_MAX_RECORDS:
        return {"skipped": f"more than {ROUGE_STATS_MAX_RECORDS} records; see nn_rouge_hist"}
    from app.pipeline.rouge import nearest_neighbours

    items = []
    for c in iter_contents(db, snapshot_id):
        text = c["instruction"] or next(
            (m["content"] for m in c.get("messages") or [] if m["role"] == "user"), ""
        )
        items.append((str(c["record_id"]), text))
    hist: Counter[str] = Counter()
    for score, _ in nearest_neighbours(items, floor=ROUGE_FLOOR):
        hist[_bucket(score, SCORE_BUCKETS) if score >= ROUGE_FLOOR else none_label({ROUGE_FLOOR})] += 1
    return dict(hist)


def iter_contents(db: Session, snapshot_id: int) -> Iterator[dict[str, Any]]:
    last = -1
    while True:
        rows = db.execute(
            select(SnapshotItem.record_id, SnapshotItem.content)
            .where(SnapshotItem.snapshot_id == snapshot_id, SnapshotItem.record_id > last)
            .order_by(SnapshotItem.record_id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for record_id, content in rows:
            yield {"record_id": record_id, **content}
        last = rows[-1][0]


def require_snapshot(
    *, db: Session, user: User, snapshot_id: int, min_role: str = Role.annotator.value
) -> Snapshot:
    snap = get_or_404(db, Snapshot, snapshot_id, f"snapshot {snapshot_id}")
    with not_found_as(f"snapshot {snapshot_id}"):
        require_dataset(db=db, user=user, dataset_id=snap.dataset_id, min_role=min_role)
    return snap


def list_snapshots(*, db: Session, user: User, dataset_id: int) -> Sequence[Snapshot]:
    require_dataset(db=db, user=user, dataset_id=dataset_id)
    return db.scalars(select(Snapshot).where(Snapshot.dataset_id == dataset_id).order_by(Snapshot.id)).all()


def diff(*, db: Session, user: User, a_id: int, b_id: int) -> dict[str, Any]:
    a = require_snapshot(db=db, user=user, snapshot_id=a_id)
    b = require_snapshot(db=db, user=user, snapshot_id=b_id)
    va = dict(
        db.execute(
            select(SnapshotItem.record_id, SnapshotItem.record_version).where(
                SnapshotItem.snapshot_id == a.id
            )
        ).all()
    )
    vb = dict(
        db.execute(
            select(SnapshotItem.record_id, SnapshotItem.record_version).where(
                SnapshotItem.snapshot_id == b.id
            )
        ).all()
    )
    added = sorted(set(vb) - set(va))
    removed = sorted(set(va) - set(vb))
    common = set(va) & set(vb)
    changed = sorted(r for r in common if va[r] != vb[r])
    return {"added": added, "removed": removed, "changed": changed, "unchanged": len(common) - len(changed)}


def export_snapshot(
    *, db: Session, user: User, snapshot_id: int, fmt: str, val_fraction: float = 0.0, seed: int = 0
) -> tuple[Path, str]:
    """Write the export to a file under DATA_DIR/exports. With a split, a zip of train + validation files."""
    snap = require_snapshot(db=db, user=user, snapshot_id=snapshot_id, min_role=Role.curator.value)
    audit.record(
        db=db,
        user_id=user.id,
        action="snapshot.export",
        entity_type="snapshot",
        entity_id=snap.id,
        dataset_id=snap.dataset_id,
        detail={"format": fmt, "val_fraction": val_fraction, "seed": seed, "records": snap.record_count},
    )
    if fmt not in formats.EXPORTERS:
        raise Invalid(
            f"unknown export format {fmt!r}; use one of {', '.join(formats.EXPORTERS)}", field="format"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise Invalid("val_fraction must be in [0, 1)", field="val_fraction")
    out_dir = get_settings().data_dir / "exports"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = list(iter_contents(db, snap.id))
    writer, ext = formats.EXPORTERS[fmt]
    base = f"snapshot-{snap.id}-{snap.content_hash[:12]}-{fmt}"
    if val_fraction <= 0:
        path = out_dir / f"{base}.{ext}"
        with path.open("w", encoding="utf-8") as fh:
            writer(records, fh)
        return path, f"{base}.{ext}"
    train, val = formats.split(records, val_fraction=val_fraction, seed=seed)
    path = out_dir / f"{base}-split{val_fraction}-seed{seed}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for part, rows in (("train", train), ("validation", val)):
            buf = io.StringIO()
            writer(rows, buf)
            zf.writestr(f"{part}.{ext}", buf.getvalue())
    return path, path.name

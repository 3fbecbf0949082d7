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

from sqlalchemy import and_, func, insert, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.config import get_settings
from app.datasets.models import Dataset
from app.datasets.service import require_dataset
from app.db import get_or_404
from app.errors import Conflict, Invalid, not_found_as
from app.pipeline import formats
from app.preferences.pairs import preferred_pairs
from app.preferences.service import candidates_of
from app.records.models import Record, RecordRevision, ReviewEvent
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
        "job_id": r.job_id,
        "prompt_hash": r.prompt_hash,
        "license": _license(r.meta),
    }


def _license(meta: Mapping[str, Any] | None) -> str | None:
    """The licence column an imported row carried (kept in meta's import_extra), for the dataset card."""
    extra = (meta or {}).get("import_extra") or {}
    value = extra.get("license", extra.get("licence")) if isinstance(extra, dict) else None
    return str(value) if value not in (None, "") else None


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
        preferences = frozen_preferences(db, [r.id for r in rows])
        for r in rows:
            nn_status, nn_cutoff = nn_finding(r, job_cutoffs)
            if nn_status == "below_cutoff":
                below_cutoff[r.id] = nn_cutoff
            content = record_content(r) | preferences.get(r.id, {})
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


def frozen_preferences(db: Session, record_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """What a snapshot keeps of the records' preference data, for those that have candidates: the candidates
    and the pairs their judgments give now (app.preferences.pairs). Frozen in the snapshot's content, so a
    judgment made later changes no pair of it."""
    cands = candidates_of(db=db, record_ids=record_ids)
    if not cands:
        return {}
    pairs = preferred_pairs(db, list(cands))
    return {
        rid: {
            "candidates": [
                {"id": c.id, "content": c.content, "source": c.source, "model": c.model} for c in rows
            ],
            "preference_pairs": pairs.get(rid, []),
        }
        for rid, rows in cands.items()
    }


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


def iter_contents(db: Session, snapshot_id: int, *, with_version: bool = False) -> Iterator[dict[str, Any]]:
    last = -1
    while True:
        rows = db.execute(
            select(SnapshotItem.record_id, SnapshotItem.record_version, SnapshotItem.content)
            .where(SnapshotItem.snapshot_id == snapshot_id, SnapshotItem.record_id > last)
            .order_by(SnapshotItem.record_id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for record_id, version, content in rows:
            if with_version:
                yield {"record_id": record_id, "record_version": version, **content}
            else:
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
    # A judgment changes a record's frozen pairs, not its version: those records changed too.
    pa, pb = _frozen_pairs(db, a.id), _frozen_pairs(db, b.id)
    changed = sorted(r for r in common if va[r] != vb[r] or pa.get(r) != pb.get(r))
    return {"added": added, "removed": removed, "changed": changed, "unchanged": len(common) - len(changed)}


def _frozen_pairs(db: Session, snapshot_id: int) -> dict[int, Any]:
    """record -> the preference pairs frozen in the snapshot, for the records that have candidates."""
    rows = db.execute(
        select(SnapshotItem.record_id, SnapshotItem.content["preference_pairs"]).where(
            SnapshotItem.snapshot_id == snapshot_id
        )
    )
    return {rid: pairs for rid, pairs in rows if pairs is not None}


def export_snapshot(
    *,
    db: Session,
    user: User,
    snapshot_id: int,
    fmt: str,
    val_fraction: float = 0.0,
    seed: int = 0,
    parquet: bool = False,
    bundle: bool = False,
) -> tuple[Path, str, str]:
    """Write the export under DATA_DIR/exports: (path, download name, media type).

    One JSON/JSONL file; with a split, a zip of train + validation files; with `parquet` or `bundle`, a zip
    bundle of the split files with README.md (the dataset card) and LLaMA-Factory's dataset_info.json."""
    snap = require_snapshot(db=db, user=user, snapshot_id=snapshot_id, min_role=Role.curator.value)
    audit.record(
        db=db,
        user_id=user.id,
        action="snapshot.export",
        entity_type="snapshot",
        entity_id=snap.id,
        dataset_id=snap.dataset_id,
        detail={"format": fmt, "val_fraction": val_fraction, "seed": seed, "records": snap.record_count}
        | ({"parquet": parquet, "bundle": bundle} if parquet or bundle else {}),
    )
    check_export(fmt, val_fraction)
    out_dir = get_settings().data_dir / "exports"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = f"snapshot-{snap.id}-{snap.content_hash[:12]}-{fmt}"
    split_part = f"-split{val_fraction}-seed{seed}" if val_fraction > 0 else ""
    if parquet or bundle:
        files = bundle_files(db, snap, fmt=fmt, val_fraction=val_fraction, seed=seed, parquet=parquet)
        path = out_dir / f"{base}{'-parquet' if parquet else ''}-bundle{split_part}.zip"
        _write_zip(path, files)
        return path, path.name, "application/zip"
    records = export_records(db, snap, fmt)
    writer, ext = formats.ALL_EXPORTERS[fmt]
    if val_fraction <= 0:
        path = out_dir / f"{base}.{ext}"
        with path.open("w", encoding="utf-8") as fh:
            writer(records, fh)
        return path, path.name, formats.EXPORT_MEDIA_TYPES.get(ext, "application/octet-stream")
    train, val = formats.split(records, val_fraction=val_fraction, seed=seed)
    files = {}
    for part, rows in (("train", train), ("validation", val)):
        buf = io.StringIO()
        writer(rows, buf)
        files[f"{part}.{ext}"] = buf.getvalue().encode("utf-8")
    path = out_dir / f"{base}{split_part}.zip"
    _write_zip(path, files)
    return path, path.name, "application/zip"


def check_export(fmt: str, val_fraction: float) -> None:
    if fmt not in formats.ALL_EXPORTERS:
        raise Invalid(
            f"unknown export format {fmt!r}; use one of {', '.join(formats.ALL_EXPORTERS)}", field="format"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise Invalid("val_fraction must be in [0, 1)", field="val_fraction")


def _write_zip(path: Path, files: Mapping[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def export_records(db: Session, snap: Snapshot, fmt: str) -> list[dict[str, Any]]:
    """The snapshot's records, or for `dpo` / `dpo_plain` its preference pairs (see preference_records)."""
    if fmt not in formats.PAIR_EXPORTERS:
        return list(iter_contents(db, snap.id))
    pairs = preference_records(db, snap)
    if not pairs:
        raise Invalid(
            "no preference pairs: no record of this snapshot has a reply a person edited, nor candidates "
            "with a ranking that prefers one (a tie or 'both bad' gives none)",
            field="format",
        )
    if fmt == "dpo_plain":
        for pair in pairs:
            try:
                formats.to_dpo_plain(pair)
            except ValueError as exc:
                raise Invalid(f"record {pair['record_id']}: {exc}", field="format") from None
    return pairs


def _with_reply(content: Mapping[str, Any], reply: str) -> dict[str, Any]:
    """The frozen record with `reply` as its final assistant turn (its output, for a single turn)."""
    out = dict(content)
    messages = content.get("messages")
    if messages:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        turns = [dict(m) for m in messages[:last]]
        out["messages"] = [*turns, {"role": "assistant", "content": reply}]
    else:
        out["output"] = reply
    return out


def _unconfirmed_machine_versions(
    db: Session, snap: Snapshot, batch: Sequence[Mapping[str, Any]]
) -> set[tuple[int, int]]:
    """(record, version) of the frozen versions whose text a machine wrote (their latest revision is a
    rewrite job's: no editor) and that no person confirmed by accepting the record after it and before
    the snapshot was taken. Review events are history, never rewritten, so a snapshot's pairs stay the
    same. A version bumped by a tag or rating alone has no revision of its own: its latest one counts."""
    frozen = {c["record_id"]: c["record_version"] for c in batch}
    latest: dict[int, tuple[int, bool, Any]] = {}
    for rid, version, editor, note, at in db.execute(
        select(
            RecordRevision.record_id,
            RecordRevision.version,
            RecordRevision.edited_by,
            RecordRevision.note,
            RecordRevision.edited_at,
        ).where(RecordRevision.record_id.in_(list(frozen)))
    ):
        if version <= frozen[rid] and (rid not in latest or version > latest[rid][0]):
            latest[rid] = (version, editor is None and note != "original", at)
    machine = {rid: at for rid, (_, by_machine, at) in latest.items() if by_machine}
    if not machine:
        return set()
    accepts: dict[int, list[Any]] = {}
    for rid, at, after in db.execute(
        select(ReviewEvent.record_id, ReviewEvent.at, ReviewEvent.after).where(
            ReviewEvent.record_id.in_(list(machine)),
            ReviewEvent.undone.is_(False),
            ReviewEvent.at <= snap.created_at,
        )
    ):
        if (after or {}).get("status") == "accepted":
            accepts.setdefault(rid, []).append(at)
    return {
        (rid, frozen[rid]) for rid, at in machine.items() if not any(t >= at for t in accepts.get(rid, []))
    }


def preference_records(db: Session, snap: Snapshot) -> list[dict[str, Any]]:
    """DPO pairs read from the snapshot, record by record: first the edit's pair (chosen = the reply as
    frozen, rejected = the reply of the record's first version, which RecordRevision keeps from the first edit
    on; for records a person edited before the snapshot was taken and whose reply the edit changed), then the
    pairs of its candidates as frozen at snapshot time (`frozen_preferences`). Revisions are history, never
    rewritten, and candidates' pairs are in the snapshot's content, so the pairs of a snapshot stay the same.
    Each row is the frozen record with the chosen reply as its final turn, plus `rejected` and `pair`."""
    pairs: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        ids = [c["record_id"] for c in batch]
        first = dict(
            db.execute(
                select(RecordRevision.record_id, func.min(RecordRevision.version))
                .where(RecordRevision.record_id.in_(ids))
                .group_by(RecordRevision.record_id)
            ).all()
        )
        originals = {
            rev.record_id: rev
            for rev in db.scalars(
                select(RecordRevision).where(
                    RecordRevision.record_id.in_(list(first)),
                    RecordRevision.version.in_(sorted(set(first.values()))),
                )
            )
            if first.get(rev.record_id) == rev.version
        }
        unconfirmed = _unconfirmed_machine_versions(db, snap, batch)
        for content in batch:
            original = originals.get(content["record_id"])
            if original is None or original.version >= content["record_version"]:
                _ranked(content)
                continue
            if (content["record_id"], content["record_version"]) in unconfirmed:
                _ranked(content)
                continue
            chosen = formats.to_messages(content)[-1]
            rejected = formats.to_messages(
                {
                    "instruction": original.instruction,
                    "input": original.input,
                    "output": original.output,
                    "messages": original.messages,
                }
            )[-1]
            if chosen["role"] == rejected["role"] == "assistant" and chosen["content"] != rejected["content"]:
                pairs.append({**content, "rejected": rejected["content"], "pair": {"by": "edit"}})
            _ranked(content)
        batch.clear()

    def _ranked(content: dict[str, Any]) -> None:
        for p in content.get("preference_pairs") or []:
            pairs.append(
                _with_reply(content, p["chosen"])
                | {
                    "rejected": p["rejected"],
                    "pair": {k: p[k] for k in ("by", "sources", "chosen_id", "rejected_id") if k in p},
                }
            )

    for content in iter_contents(db, snap.id, with_version=True):
        batch.append(content)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return pairs


# Job parameters that may hold where a teacher is served or a credential: never in a card.
_PRIVATE_PARAMS = frozenset({"base_url", "api_key", "api_key_env", "token", "password", "secret", "headers"})


def _public(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k.lower() not in _PRIVATE_PARAMS}


def _jobs_behind(db: Session, snap: Snapshot, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The jobs that made the records (their job ids) and the curation of the dataset before the snapshot,
    with their public parameters and the teacher (name and model; never its endpoint or key)."""
    from app.jobs.models import Job, JobStatus
    from app.pipeline.llm.config import load_teachers

    made = {r["job_id"] for r in records if r.get("job_id")}
    jobs = db.scalars(
        select(Job)
        .where(
            Job.dataset_id == snap.dataset_id,
            Job.created_at <= snap.created_at,
            Job.status == JobStatus.succeeded.value,
            Job.kind.not_in(("train", "hub_push")),
        )
        .order_by(Job.id)
    ).all()
    jobs = sorted({*jobs, *db.scalars(select(Job).where(Job.id.in_(made)))}, key=lambda j: j.id)
    try:
        teachers = load_teachers(get_settings().teachers)
    except ValueError:
        teachers = {}
    models = {r["job_id"]: r["teacher_model"] for r in records if r.get("job_id") and r.get("teacher_model")}
    out = []
    for job in jobs:
        name = job.params.get("teacher")
        model = teachers[name].model if name in teachers else models.get(job.id, "unknown")
        out.append(
            {
                "id": job.id,
                "kind": job.kind,
                "status": job.status,
                "params": _public(job.params),
                "teacher": {"name": name, "model": model} if name else None,
                "result": job.result if job.kind == "decontaminate" else {},
            }
        )
    return out


def _decontamination(job: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A decontaminate job's findings for the card: against which evaluation set, what it found, and how
    many exported records still carry its verdict (a person may have kept one)."""
    params, result = job["params"], job.get("result") or {}
    against = (
        f"snapshot {params['eval_snapshot_id']}"
        if params.get("eval_snapshot_id")
        else f"dataset {params.get('eval_dataset_id')}"
    )
    return {
        "job": job["id"],
        "against": against,
        "ngram": params.get("ngram"),
        "threshold": params.get("threshold"),
        **{
            k: result.get(k, 0) for k in ("eval_prompts", "scanned", "contaminated", "by_ngram", "by_rouge_l")
        },
        "eval_prompts_leaked": result.get("eval_prompts_leaked", 0),
        "exported_contaminated": sum(1 for r in records if r.get("reason") == "contaminated"),
    }


def bundle_files(
    db: Session, snap: Snapshot, *, fmt: str, val_fraction: float, seed: int, parquet: bool
) -> dict[str, bytes]:
    """The files of an export bundle ({path: bytes}), for a zip download or a Hub commit."""
    check_export(fmt, val_fraction)
    records = export_records(db, snap, fmt)
    dataset = db.get(Dataset, snap.dataset_id)
    assert dataset is not None  # the snapshot's foreign key
    if val_fraction > 0:
        train, val = formats.split(records, val_fraction=val_fraction, seed=seed)
        splits = {"train": train, "validation": val}
    else:
        splits = {"train": records}
    lengths = [_length(r) for r in records]
    jobs = _jobs_behind(db, snap, records)
    card = formats.CardInfo(
        title=f"{dataset.name} / {snap.name}",
        description=snap.description or dataset.description,
        language=dataset.language,
        fmt=fmt,
        snapshot={
            "id": snap.id,
            "name": snap.name,
            "content_hash": snap.content_hash,
            "created_at": f"{snap.created_at:%Y-%m-%d %H:%M} UTC",
            "record_count": snap.record_count,
            "filter": snap.filter,
        },
        stats=compute_stats(iter(records)),
        lengths={
            "prompt": formats.length_summary([p for p, _ in lengths]),
            "response": formats.length_summary([r for _, r in lengths]),
        },
        jobs=jobs,
        evaluations=[_decontamination(job, records) for job in jobs if job["kind"] == "decontaminate"],
        licenses=dict(Counter(r["license"] for r in records if r.get("license"))),
        val_fraction=val_fraction,
        seed=seed,
    )
    name = f"instructforge_snapshot_{snap.id}"
    return formats.build_bundle(fmt=fmt, splits=splits, parquet=parquet, card=card, name=name)


def _ordered(hist: Mapping[str, int]) -> dict[str, int]:
    """A histogram in bucket order: the "none ≥ …" bucket first, then by lower edge (the database's JSON
    may have reordered the keys)."""

    def key(label: str) -> tuple[int, float]:
        try:
            return 1, float(label)
        except ValueError:
            return 0, 0.0

    return {k: hist[k] for k in sorted(hist, key=key)}


def snapshot_view(*, db: Session, user: User, snapshot_id: int) -> dict[str, Any]:
    """What the snapshot page shows: the snapshot, its dataset, and its stored stats with histograms in order."""
    snap = require_snapshot(db=db, user=user, snapshot_id=snapshot_id)
    dataset = db.get(Dataset, snap.dataset_id)
    stats = dict(snap.stats or {})
    for name in ("prompt_chars_hist", "response_chars_hist", "nn_rouge_hist", "max_rouge_l_hist"):
        hist = stats.get(name)
        if isinstance(hist, dict) and "skipped" not in hist:
            stats[name] = _ordered(hist)
    return {"snap": snap, "dataset": dataset, "stats": stats}

"""An imported preference dataset's candidates and verdicts, as Candidate and PreferenceJudgment rows.

The import writes records first (app.imports.service, the same fast path as any format); each record of a
preference format carries ``meta["import_preference"]`` (app.pipeline.formats.preference). This pass turns
that into rows and drops it from meta, one batch per transaction: a record is either done whole (its
candidates, its judgments and the meta key gone) or not at all, so a re-run after a crash redoes exactly the
records left and duplicates nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.preferences.models import (
    Candidate,
    CandidateSource,
    JudgmentKind,
    JudgmentSource,
    PreferenceJudgment,
)
from app.records.models import Record

BATCH = 500


def _pending(db: Session, *, dataset_id: int, key_prefix: str, after: int) -> list[Record]:
    return list(
        db.scalars(
            select(Record)
            .where(
                Record.dataset_id == dataset_id,
                Record.gen_key.startswith(key_prefix + ":"),
                Record.id > after,
            )
            .order_by(Record.id)
            .limit(BATCH)
        )
    )


def materialize_batch(
    db: Session, *, dataset_id: int, key_prefix: str, job_id: int | None, after: int = 0
) -> int | None:
    """Rows for the next batch of the import's records after id `after`; the last id seen, None when done."""
    rows = _pending(db, dataset_id=dataset_id, key_prefix=key_prefix, after=after)
    if not rows:
        return None
    # Two flushes per batch, not two per record: all candidates (their ids come back in one round trip),
    # then all judgments.
    todo = []
    for record in rows:
        pref = (record.meta or {}).get("import_preference")
        if isinstance(pref, dict):
            todo.append((record, pref, _candidates(record, pref, job_id)))
            record.meta = {k: v for k, v in record.meta.items() if k != "import_preference"}
    db.add_all([c for _, _, cands in todo for c in cands])
    db.flush()
    for record, pref, cands in todo:
        db.add_all(_judgments(record, pref, cands, job_id))
    db.flush()
    return rows[-1].id


def materialize(db: Session, *, dataset_id: int, key_prefix: str, job_id: int | None) -> None:
    """Every record of the import, in this session's transaction (the inline import's one request)."""
    after: int | None = 0
    while after is not None:
        after = materialize_batch(
            db, dataset_id=dataset_id, key_prefix=key_prefix, job_id=job_id, after=after
        )


def _candidates(record: Record, pref: dict[str, Any], job_id: int | None) -> list[Candidate]:
    fmt = str(pref.get("format", "preference"))
    candidates = []
    for i, cand in enumerate(pref.get("candidates") or []):
        detail = {k: v for k, v in cand.items() if k not in ("content", "model")}
        candidates.append(
            Candidate(
                record_id=record.id,
                dataset_id=record.dataset_id,
                content=str(cand.get("content", "")),
                source=CandidateSource.imported.value,
                model=cand.get("model") or f"import:{fmt}",
                params={},
                job_id=job_id,
                gen_key=f"import:{i}",
                meta={"format": fmt, "position": i, **detail},
            )
        )
    return candidates


def _judgments(
    record: Record, pref: dict[str, Any], candidates: list[Candidate], job_id: int | None
) -> list[PreferenceJudgment]:
    fmt = str(pref.get("format", "preference"))
    by = str(pref.get("by", "unknown"))
    judge_model = pref.get("judge_model")
    out: list[PreferenceJudgment] = []
    ids = [c.id for c in candidates]
    common: dict[str, Any] = {
        "record_id": record.id,
        "dataset_id": record.dataset_id,
        "source": JudgmentSource.imported.value,
        "job_id": job_id,
        "judge_model": judge_model,
    }
    provenance = {"format": f"import:{fmt}", "by": by}
    verdict = pref.get("verdict") or {}
    if verdict.get("kind") == "pairwise" and len(ids) == 2:
        scores = {str(c.id): c.meta["score"] for c in candidates if "score" in c.meta}
        out.append(
            PreferenceJudgment(
                **common,
                kind=JudgmentKind.pairwise.value,
                candidate_ids=ids,
                choice=str(verdict.get("choice", "a")),
                gen_key="import:verdict",
                meta={**provenance, **({"scores": scores} if scores else {})},
            )
        )
    elif verdict.get("kind") == "ranking":
        ranking = [[ids[i] for i in group] for group in verdict.get("ranking") or []]
        ranked = [cid for group in ranking for cid in group]
        out.append(
            PreferenceJudgment(
                **common,
                kind=JudgmentKind.ranking.value,
                candidate_ids=ranked,
                ranking=ranking,
                gen_key="import:verdict",
                meta={**provenance, "scores": {str(c.id): c.meta.get("score") for c in candidates}},
            )
        )
    for cand in candidates:
        # Judgments hold 1-5 integer ratings (PreferenceJudgment.scores); any other figure stays in the
        # candidate's meta only.
        aspects = {
            k: int(v)
            for k, v in (cand.meta.get("aspects") or {}).items()
            if float(v).is_integer() and 1 <= v <= 5
        }
        if aspects:
            rationales = cand.meta.get("rationales") or {}
            out.append(
                PreferenceJudgment(
                    **common,
                    kind=JudgmentKind.scores.value,
                    candidate_ids=[cand.id],
                    scores=aspects,
                    rationale="\n".join(f"{k}: {v}" for k, v in rationales.items()),
                    gen_key=f"import:scores:{cand.meta['position']}",
                    meta=provenance,
                )
            )
    return out

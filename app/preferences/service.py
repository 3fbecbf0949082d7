"""Candidates and judgments: keyword-only services shared by the API, the respond / rank jobs and imports.

Who outranks whom (DESIGN rule 7): a person's judgment is only ever superseded by the same person's later
judgment on the same candidates; a machine judgment never supersedes a person's, it is stored beside it as
advice (``source='judge'``). Readers that need "the" decision on a record take people's current judgments
first and fall back to a judge's only where no person decided (see ``current_judgments``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import User
from app.db import insert_ignoring
from app.errors import Invalid
from app.preferences.models import (
    ASPECTS,
    PAIRWISE_CHOICES,
    Candidate,
    CandidateSource,
    JudgmentKind,
    JudgmentSource,
    PreferenceJudgment,
)
from app.records.models import Record

MAX_CANDIDATE_CHARS = 200_000


def final_prompt_and_answer(record: Record) -> tuple[list[dict[str, str]], str]:
    """The conversation a candidate answers and the record's own answer to it: for a multi-turn record,
    every turn before the final assistant turn (all of them when the last turn is the user's); for an
    Alpaca-style record, the instruction with its input (and the system prompt)."""
    if record.messages:
        turns = [
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
            for m in record.messages
            if isinstance(m, dict)
        ]
        if turns and turns[-1]["role"] == "assistant":
            return turns[:-1], turns[-1]["content"]
        return turns, ""
    user = record.instruction if not record.input else f"{record.instruction}\n\n{record.input}"
    prompt = [{"role": "system", "content": record.system}] if record.system else []
    return [*prompt, {"role": "user", "content": user}], record.output


def candidates_of(*, db: Session, record_ids: Iterable[int]) -> dict[int, list[Candidate]]:
    """Each record's candidates in id order (records without any are absent)."""
    ids = list(record_ids)
    out: dict[int, list[Candidate]] = {}
    if not ids:
        return out
    for c in db.scalars(select(Candidate).where(Candidate.record_id.in_(ids)).order_by(Candidate.id)):
        out.setdefault(c.record_id, []).append(c)
    return out


def list_candidates(*, db: Session, record_id: int) -> list[Candidate]:
    return candidates_of(db=db, record_ids=[record_id]).get(record_id, [])


def add_candidate(
    *,
    db: Session,
    record: Record,
    content: str,
    source: str,
    model: str | None = None,
    params: dict[str, Any] | None = None,
    user_id: int | None = None,
    job_id: int | None = None,
    training_run_id: int | None = None,
    gen_key: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Candidate | None:
    """Store one candidate of `record`. With a `gen_key`, a second insert of the same key is ignored and
    None is returned (a resumed job writes nothing twice)."""
    if source not in {s.value for s in CandidateSource}:
        raise Invalid(f"unknown candidate source {source!r}", field="source")
    if not content.strip():
        raise Invalid("a candidate needs content", field="content")
    if len(content) > MAX_CANDIDATE_CHARS:
        raise Invalid(f"content is longer than {MAX_CANDIDATE_CHARS} characters", field="content")
    values = {
        "record_id": record.id,
        "dataset_id": record.dataset_id,
        "content": content,
        "source": source,
        "model": model,
        "params": params or {},
        "user_id": user_id,
        "job_id": job_id,
        "training_run_id": training_run_id,
        "gen_key": gen_key,
        "meta": meta or {},
    }
    if gen_key is None:
        cand = Candidate(**values)
        db.add(cand)
        db.flush()
        return cand
    stmt = insert_ignoring(db, Candidate, index_elements=["record_id", "gen_key"]).values(**values)
    if db.execute(stmt).rowcount == 0:  # type: ignore[attr-defined]
        return None
    return db.scalar(select(Candidate).where(Candidate.record_id == record.id, Candidate.gen_key == gen_key))


def original_candidate(*, db: Session, record: Record) -> Candidate | None:
    """The record's own answer as a candidate (source 'original', one per record version), so it can be
    compared with the others; None when the record has no answer."""
    _, answer = final_prompt_and_answer(record)
    if not answer.strip():
        return None
    key = f"original:v{record.version}"
    found = db.scalar(select(Candidate).where(Candidate.record_id == record.id, Candidate.gen_key == key))
    return found or add_candidate(
        db=db,
        record=record,
        content=answer,
        source=CandidateSource.original.value,
        gen_key=key,
        meta={"version": record.version},
    )


def add_person_candidate(
    *, db: Session, user: User, record: Record, content: str, note: str = ""
) -> Candidate:
    """A person's own answer to the record's prompt, as a candidate (source 'person')."""
    cand = add_candidate(
        db=db,
        record=record,
        content=content,
        source=CandidateSource.person.value,
        user_id=user.id,
        meta={"note": note} if note else {},
    )
    assert cand is not None  # no gen_key: always inserted
    audit.record(
        db=db,
        user_id=user.id,
        action="candidate.add",
        entity_type="candidate",
        entity_id=cand.id,
        dataset_id=record.dataset_id,
        detail={"record_id": record.id, "chars": len(content)},  # the text itself is the candidate's
    )
    return cand


def require_original(*, db: Session, record: Record) -> Candidate:
    """The record's own answer as a candidate; Invalid when it has none to compare."""
    cand = original_candidate(db=db, record=record)
    if cand is None:
        raise Invalid(f"record {record.id} has no answer of its own to compare", field="record_id")
    return cand


def _check_candidates(db: Session, record: Record, ids: Sequence[int], field: str) -> None:
    if len(set(ids)) != len(ids):
        raise Invalid("a candidate appears twice", field=field)
    known = set(db.scalars(select(Candidate.id).where(Candidate.record_id == record.id)))
    missing = [i for i in ids if i not in known]
    if missing:
        raise Invalid(f"candidates {missing} are not candidates of record {record.id}", field=field)


def _supersede(db: Session, record_id: int, new: PreferenceJudgment, *, same: Any) -> None:
    """Mark the earlier current judgments `same` selects as superseded by `new` (history stays)."""
    db.execute(
        update(PreferenceJudgment)
        .where(
            PreferenceJudgment.record_id == record_id,
            PreferenceJudgment.superseded_by_id.is_(None),
            PreferenceJudgment.id != new.id,
            *same,
        )
        .values(superseded_by_id=new.id)
        .execution_options(synchronize_session=False)
    )


def _pair_key(ids: Sequence[int]) -> list[int]:
    return sorted(int(i) for i in ids)


def record_pairwise(
    *, db: Session, user: User, record: Record, a_id: int, b_id: int, choice: str, rationale: str = ""
) -> PreferenceJudgment:
    """A person's choice between two candidates ('a', 'b', 'tie' or 'both_bad'); it supersedes the same
    person's earlier choice on the same two candidates (in either order)."""
    if choice not in PAIRWISE_CHOICES:
        raise Invalid(f"choice must be one of {', '.join(PAIRWISE_CHOICES)}", field="choice")
    _check_candidates(db, record, [a_id, b_id], "candidate_ids")
    judgment = PreferenceJudgment(
        record_id=record.id,
        dataset_id=record.dataset_id,
        kind=JudgmentKind.pairwise.value,
        source=JudgmentSource.person.value,
        candidate_ids=[a_id, b_id],
        choice=choice,
        rationale=rationale,
        user_id=user.id,
    )
    db.add(judgment)
    db.flush()
    earlier = db.scalars(
        select(PreferenceJudgment).where(
            PreferenceJudgment.record_id == record.id,
            PreferenceJudgment.kind == JudgmentKind.pairwise.value,
            PreferenceJudgment.source == JudgmentSource.person.value,
            PreferenceJudgment.user_id == user.id,
            PreferenceJudgment.superseded_by_id.is_(None),
            PreferenceJudgment.id != judgment.id,
        )
    ).all()
    replaced = None
    for old in earlier:
        if _pair_key(old.candidate_ids) == _pair_key([a_id, b_id]):
            old.superseded_by_id, replaced = judgment.id, old.id
    db.flush()
    _audit(db, user, record, judgment, replaced=replaced)
    return judgment


def _audit(
    db: Session, user: User, record: Record, judgment: PreferenceJudgment, *, replaced: int | None = None
) -> None:
    audit.record(
        db=db,
        user_id=user.id,
        action=f"judgment.{judgment.kind}",
        entity_type="record",
        entity_id=record.id,
        dataset_id=record.dataset_id,
        detail={
            "judgment_id": judgment.id,
            "candidate_ids": judgment.candidate_ids,
            "choice": judgment.choice,
            "ranking": judgment.ranking,
            "supersedes": replaced,
        },
    )


def normalize_ranking(ranking: Sequence[Any], field: str = "ranking") -> list[list[int]]:
    """A ranking as groups, best first: ``[3, [5, 7], 2]`` (5 and 7 tied) becomes ``[[3], [5, 7], [2]]``."""
    groups: list[list[int]] = []
    for i, entry in enumerate(ranking):
        group = entry if isinstance(entry, list) else [entry]
        if not group or not all(isinstance(x, int) and not isinstance(x, bool) for x in group):
            raise Invalid(
                "each entry is a candidate id or a non-empty list of tied ids", field=f"{field}.{i}"
            )
        groups.append([int(x) for x in group])
    return groups


def record_ranking(
    *, db: Session, user: User, record: Record, ranking: Sequence[Any], rationale: str = ""
) -> PreferenceJudgment:
    """A person's full ranking of 2+ candidates, best first, ties as groups; it supersedes the same
    person's earlier ranking of the record."""
    groups = normalize_ranking(ranking)
    ids = [i for g in groups for i in g]
    if len(ids) < 2:
        raise Invalid("a ranking orders at least two candidates", field="ranking")
    _check_candidates(db, record, ids, "ranking")
    judgment = PreferenceJudgment(
        record_id=record.id,
        dataset_id=record.dataset_id,
        kind=JudgmentKind.ranking.value,
        source=JudgmentSource.person.value,
        candidate_ids=ids,
        ranking=groups,
        rationale=rationale,
        user_id=user.id,
    )
    db.add(judgment)
    db.flush()
    _supersede(
        db,
        record.id,
        judgment,
        same=[
            PreferenceJudgment.kind == JudgmentKind.ranking.value,
            PreferenceJudgment.source == JudgmentSource.person.value,
            PreferenceJudgment.user_id == user.id,
        ],
    )
    _audit(db, user, record, judgment)
    return judgment


def check_scores(scores: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for aspect, value in scores.items():
        if aspect not in ASPECTS:
            raise Invalid(f"unknown aspect {aspect!r}; aspects: {', '.join(ASPECTS)}", field="scores")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise Invalid("each score is an integer from 1 to 5", field=f"scores.{aspect}")
        out[aspect] = value
    return out


def record_machine_judgment(
    *,
    db: Session,
    record: Record,
    kind: str,
    candidate_ids: Sequence[int],
    job_id: int | None,
    judge_model: str | None,
    gen_key: str,
    choice: str | None = None,
    ranking: list[list[int]] | None = None,
    scores: dict[str, int] | None = None,
    rationale: str = "",
    meta: dict[str, Any] | None = None,
    source: str = JudgmentSource.judge.value,
) -> PreferenceJudgment | None:
    """A judge's (or an import's) verdict, stored by key: a resumed job's second insert is ignored (None).

    It supersedes only earlier machine judgments of the same kind on the same candidates by the same
    judge model; people's judgments are never touched, whatever they say."""
    if kind not in {k.value for k in JudgmentKind}:
        raise Invalid(f"unknown judgment kind {kind!r}", field="kind")
    values = {
        "record_id": record.id,
        "dataset_id": record.dataset_id,
        "kind": kind,
        "source": source,
        "candidate_ids": [int(i) for i in candidate_ids],
        "choice": choice,
        "ranking": ranking,
        "scores": scores,
        "rationale": rationale,
        "job_id": job_id,
        "judge_model": judge_model,
        "gen_key": gen_key,
        "meta": meta or {},
    }
    stmt = insert_ignoring(db, PreferenceJudgment, index_elements=["record_id", "gen_key"]).values(**values)
    if db.execute(stmt).rowcount == 0:  # type: ignore[attr-defined]
        return None
    new = db.scalar(
        select(PreferenceJudgment).where(
            PreferenceJudgment.record_id == record.id, PreferenceJudgment.gen_key == gen_key
        )
    )
    assert new is not None
    target = _pair_key(new.candidate_ids)
    for old in db.scalars(
        select(PreferenceJudgment).where(
            PreferenceJudgment.record_id == record.id,
            PreferenceJudgment.kind == kind,
            PreferenceJudgment.source == source,
            PreferenceJudgment.judge_model == judge_model,
            PreferenceJudgment.superseded_by_id.is_(None),
            PreferenceJudgment.id != new.id,
        )
    ):
        if _pair_key(old.candidate_ids) == target:
            old.superseded_by_id = new.id
    db.flush()
    return new


def judgments_of(
    *, db: Session, record_ids: Iterable[int], include_superseded: bool = False
) -> dict[int, list[PreferenceJudgment]]:
    """Each record's judgments in id order (current ones only unless `include_superseded`)."""
    ids = list(record_ids)
    out: dict[int, list[PreferenceJudgment]] = {}
    if not ids:
        return out
    query = select(PreferenceJudgment).where(PreferenceJudgment.record_id.in_(ids))
    if not include_superseded:
        query = query.where(PreferenceJudgment.superseded_by_id.is_(None))
    for j in db.scalars(query.order_by(PreferenceJudgment.id)):
        out.setdefault(j.record_id, []).append(j)
    return out


def current_judgments(*, db: Session, record_id: int) -> list[PreferenceJudgment]:
    """The record's current judgments: people's, or a machine's only where no person judged the record."""
    rows = judgments_of(db=db, record_ids=[record_id]).get(record_id, [])
    people = [j for j in rows if j.source == JudgmentSource.person.value]
    return people or rows


def person_judged(*, db: Session, record_ids: Iterable[int]) -> set[int]:
    """The records among these that a person ranked or chose on (current judgments)."""
    ids = list(record_ids)
    if not ids:
        return set()
    return set(
        db.scalars(
            select(PreferenceJudgment.record_id).where(
                PreferenceJudgment.record_id.in_(ids),
                PreferenceJudgment.source == JudgmentSource.person.value,
                PreferenceJudgment.superseded_by_id.is_(None),
            )
        )
    )

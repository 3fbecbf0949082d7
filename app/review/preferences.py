"""What the review page shows of a record's candidates, the judgments in its history, and pairwise agreement.

The judgments themselves are stored by app.preferences (the review page posts them to
``/records/{id}/judgments/pairwise`` and ``/ranking``); this module only reads them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import combinations
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.preferences.models import Candidate, JudgmentKind, JudgmentSource, PreferenceJudgment
from app.preferences.service import candidates_of, judgments_of
from app.records.models import Record
from app.review.schemas import HistoryEntry, ReviewCandidate, ReviewPreference

CHOICE_WORDS = {
    "a": "prefers {a} over {b}",
    "b": "prefers {b} over {a}",
    "tie": "{a} and {b} tie",
    "both_bad": "{a} and {b} both bad",
}


def _label(position: Mapping[int, int], cid: int) -> str:
    return f"#{position[cid]}" if cid in position else f"candidate {cid}"


def describe(j: PreferenceJudgment, position: Mapping[int, int]) -> str:
    """A judgment in words, candidates by their number on the review page: '#2 over #1', '#3 > #1 = #2'."""
    ids = [int(c) for c in j.candidate_ids]
    if j.kind == JudgmentKind.pairwise.value and len(ids) == 2:
        template = CHOICE_WORDS.get(j.choice or "", "{a} ? {b}")
        return template.format(a=_label(position, ids[0]), b=_label(position, ids[1]))
    if j.kind == JudgmentKind.ranking.value and j.ranking:
        return "ranks " + " > ".join(
            " = ".join(_label(position, int(c)) for c in group) for group in j.ranking
        )
    if j.kind == JudgmentKind.scores.value and ids:
        scores = ", ".join(f"{k} {v}" for k, v in (j.scores or {}).items())
        return f"scores {_label(position, ids[0])}: {scores}"
    return j.kind


def _who(j: PreferenceJudgment, names: Mapping[int, str]) -> str | None:
    if j.source == JudgmentSource.person.value:
        return names.get(j.user_id) if j.user_id is not None else None
    if j.source == JudgmentSource.imported.value:
        meta = j.meta or {}
        return f"{meta.get('format', 'import')} ({meta.get('by', 'unknown')})"
    return f"judge {j.judge_model or ''}".strip()


def _names(db: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(db.execute(select(User.id, User.username).where(User.id.in_(wanted))).tuples().all())


def compare_clauses(*, user_id: int, dataset_id: int) -> list[ColumnElement[bool]]:
    """The compare queue: the dataset's pending or accepted records with two or more candidates on which
    this user has no current judgment (whatever others judged)."""
    return [
        Record.dataset_id == dataset_id,
        Record.status.in_(("pending", "accepted")),
        select(func.count(Candidate.id)).where(Candidate.record_id == Record.id).scalar_subquery() >= 2,
        ~exists().where(
            PreferenceJudgment.record_id == Record.id,
            PreferenceJudgment.source == JudgmentSource.person.value,
            PreferenceJudgment.user_id == user_id,
            PreferenceJudgment.superseded_by_id.is_(None),
        ),
    ]


def display_order(record_id: int, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The order the review page numbers a record's candidates in: shuffled per record, the same on every
    visit. In id order the imported "chosen" answer, or the record's own, would always be #1, and people
    (like LLM judges) favour a position."""
    return sorted(candidates, key=lambda c: hashlib.sha256(f"{record_id}:{c.id}".encode()).digest())


def review_preferences(
    db: Session, record_ids: Sequence[int], user_id: int
) -> dict[int, tuple[list[ReviewCandidate], ReviewPreference | None, list[str]]]:
    """Per record with candidates: its candidates (numbered as the page shows them), the viewer's current
    judgment, and the machines' current verdicts in words (advice shown beside)."""
    cands = candidates_of(db=db, record_ids=record_ids)
    if not cands:
        return {}
    judgments = judgments_of(db=db, record_ids=list(cands))
    out: dict[int, tuple[list[ReviewCandidate], ReviewPreference | None, list[str]]] = {}
    for rid, found in cands.items():
        rows = display_order(rid, found)
        position = {c.id: i + 1 for i, c in enumerate(rows)}
        shown = [
            ReviewCandidate(id=c.id, number=position[c.id], content=c.content, source=c.source, model=c.model)
            for c in rows
        ]
        mine: ReviewPreference | None = None
        advice: list[str] = []
        for j in judgments.get(rid, []):
            if j.source == JudgmentSource.person.value and j.user_id == user_id:
                mine = ReviewPreference(
                    kind=j.kind,
                    choice=j.choice,
                    candidate_ids=[int(c) for c in j.candidate_ids],
                    ranking=j.ranking,
                    summary=describe(j, position),
                )
            elif j.source != JudgmentSource.person.value and j.kind != JudgmentKind.scores.value:
                who = _who(j, {})
                advice.append(f"{who}: {describe(j, position)}")
        out[rid] = (shown, mine, advice)
    return out


def judgment_entries(db: Session, record_id: int) -> list[tuple[datetime, HistoryEntry]]:
    """The record's judgments, superseded ones included (marked), for its timeline."""
    rows = judgments_of(db=db, record_ids=[record_id], include_superseded=True).get(record_id, [])
    if not rows:
        return []
    cands = display_order(record_id, candidates_of(db=db, record_ids=[record_id]).get(record_id, []))
    position = {c.id: i + 1 for i, c in enumerate(cands)}
    names = _names(db, (j.user_id for j in rows))
    out = []
    for j in rows:
        action = {"person": "prefer", "judge": "judge", "import": "imported verdict"}.get(j.source, j.source)
        out.append(
            (
                j.created_at,
                HistoryEntry(
                    kind="decision",
                    action=f"{action} ({j.kind})",
                    at=j.created_at.isoformat(timespec="seconds"),
                    by=_who(j, names),
                    summary=describe(j, position),
                    note=j.rationale[:2000],
                    undone=j.superseded_by_id is not None,
                ),
            )
        )
    return out


# ------------------------------------------------------------------------------------------ agreement


def _outcomes(j: PreferenceJudgment) -> dict[tuple[int, int], str]:
    """(lower id, higher id) -> 'lo' | 'hi' | 'even' for every pair of candidates the judgment compares."""
    out: dict[tuple[int, int], str] = {}
    ids = [int(c) for c in j.candidate_ids]
    if j.kind == JudgmentKind.pairwise.value and len(ids) == 2:
        a, b = ids
        winner = {"a": a, "b": b}.get(j.choice or "")
        key = (min(a, b), max(a, b))
        out[key] = "even" if winner is None else ("lo" if winner == key[0] else "hi")
    elif j.kind == JudgmentKind.ranking.value and j.ranking:
        rank = {int(c): i for i, group in enumerate(j.ranking) for c in group}
        for x, y in combinations(sorted(rank), 2):
            out[(x, y)] = "even" if rank[x] == rank[y] else ("lo" if rank[x] < rank[y] else "hi")
    return out


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa for two raters' categorical labels on the same items."""
    n = len(pairs)
    if n == 0:
        return None
    po = sum(a == b for a, b in pairs) / n
    labels = {x for pair in pairs for x in pair}
    pe = sum((sum(a == lab for a, _ in pairs) / n) * (sum(b == lab for _, b in pairs) / n) for lab in labels)
    if pe >= 1.0:
        return 1.0 if po == 1.0 else 0.0
    return round((po - pe) / (1 - pe), 4)


def pairwise_agreement(db: Session, dataset_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Agreement on candidate pairs: between annotators who compared the same two candidates, and between
    each annotator and the LLM judge. An item is a pair of candidates; its label is which one is better or
    'even' (tie, both bad, same rank). Share of equal labels and Cohen's kappa over the three labels."""
    people: dict[tuple[int, int], dict[int, str]] = defaultdict(dict)
    judge: dict[tuple[int, int], str] = {}
    # Only records a person judged can hold an agreement; an imported dataset's thousands of verdicts and
    # scores are not read at all (the dataset page computes this on every view).
    person_judged = select(PreferenceJudgment.record_id).where(
        PreferenceJudgment.dataset_id == dataset_id,
        PreferenceJudgment.source == JudgmentSource.person.value,
        PreferenceJudgment.superseded_by_id.is_(None),
    )
    for j in db.scalars(
        select(PreferenceJudgment)
        .where(
            PreferenceJudgment.record_id.in_(person_judged),
            PreferenceJudgment.superseded_by_id.is_(None),
            PreferenceJudgment.source.in_((JudgmentSource.person.value, JudgmentSource.judge.value)),
            PreferenceJudgment.kind.in_((JudgmentKind.pairwise.value, JudgmentKind.ranking.value)),
        )
        .order_by(PreferenceJudgment.id)
    ):
        for key, label in _outcomes(j).items():
            if j.source == JudgmentSource.person.value and j.user_id is not None:
                people[key][j.user_id] = label  # the latest judgment of a person on a pair counts
            elif j.source == JudgmentSource.judge.value:
                judge[key] = label
    by_pair: dict[tuple[int, int], list[tuple[str, str]]] = defaultdict(list)
    by_judge: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for key, per_user in people.items():
        for a, b in combinations(sorted(per_user), 2):
            by_pair[(a, b)].append((per_user[a], per_user[b]))
        if key in judge:
            for uid, label in per_user.items():
                by_judge[uid].append((label, judge[key]))
    names = _names(db, {u for pair in by_pair for u in pair} | set(by_judge))
    annotators = [
        {
            "a": names.get(a, str(a)),
            "b": names.get(b, str(b)),
            "pairs": len(items),
            "agree": round(sum(x == y for x, y in items) / len(items), 4),
            "kappa": cohen_kappa(items),
        }
        for (a, b), items in sorted(by_pair.items())
    ]
    with_judge = [
        {
            "annotator": names.get(uid, str(uid)),
            "pairs": len(items),
            "agree": round(sum(x == y for x, y in items) / len(items), 4),
            "kappa": cohen_kappa(items),
        }
        for uid, items in sorted(by_judge.items(), key=lambda kv: names.get(kv[0], ""))
    ]
    return annotators, with_judge

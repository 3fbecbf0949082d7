"""What curators look at: dataset stats, annotator progress and speed, agreement, near-duplicate groups,
and the preference pairs that human edits and candidate rankings yield."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations, pairwise
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, null, or_, select
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.datasets import service as datasets
from app.datasets.service import require_dataset
from app.errors import NotFound
from app.preferences.models import PreferenceJudgment
from app.preferences.pairs import preferred_pairs
from app.preferences.service import final_prompt_and_answer
from app.records import service as records
from app.records.models import Record, RecordAssignment, RecordRevision, ReviewEvent
from app.records.schemas import RecordFilter
from app.review.preferences import pairwise_agreement
from app.review.service import DECISION_ACTIONS, generation_cutoffs, none_label

LENGTH_EDGES = (0, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# A gap longer than this between two decisions is a break, not review time.
IDLE_CAP_S = 300.0
MAX_EVENTS = 50_000
FILTERED = "filtered"
# The two sets of dataset-page figures, each cached on its own.
ALL_RECORDS, WITHOUT_FILTERED = "all", "without_filtered"
# Part of every cache key: raise it when the cached figures change shape, so that a page never reads figures
# an older version stored (a missing key would fail the template).
FIGURES_VERSION = "v1"


def _bucket_expr(value: ColumnElement[Any], edges: Sequence[float]) -> ColumnElement[Any]:
    """The index of the highest edge <= value, computed in SQL so a 100k-row dataset is one scan."""
    return case(*[(value >= e, i) for i, e in reversed(list(enumerate(edges)))], else_=0)


def _edge_label(edges: Sequence[float], i: int) -> str:
    """A bucket by its lower bound, short enough for a chart axis: 0, 20, ..., 1k, 2k, 5k+."""
    edge = edges[i]
    text = f"{edge / 1000:g}k" if edge >= 1000 else f"{edge:g}"
    return text + ("+" if i + 1 == len(edges) else "")


def _first_word(db: Session) -> ColumnElement[str]:
    text = func.lower(func.ltrim(Record.instruction))
    if db.get_bind().dialect.name == "postgresql":
        return func.split_part(text, " ", 1)
    return func.substr(text, 1, func.instr(text + " ", " ") - 1)


def _nn_cutoff(db: Session, job_cutoffs: dict[int, float]) -> ColumnElement[Any]:
    """The search cutoff behind a record's stored `nn_score`, NULL when unknown: the SQL twin of
    `app.review.service.nn_cutoff` (the dedup run's `meta.dedup.threshold` when a dedup run stored it,
    else the threshold of the generation job that did)."""
    threshold = Record.meta[("dedup", "threshold")]
    if db.get_bind().dialect.name == "postgresql":
        has_dedup = func.jsonb_typeof(Record.meta["dedup"]).is_not(None)
        numeric = func.jsonb_typeof(threshold) == "number"
    else:
        has_dedup = func.json_type(Record.meta, "$.dedup").is_not(None)
        numeric = func.json_type(Record.meta, "$.dedup.threshold").in_(("real", "integer"))
    from_job = case(job_cutoffs, value=Record.job_id, else_=null()) if job_cutoffs else null()
    return case((has_dedup, case((numeric, threshold.as_float()), else_=null())), else_=from_job)


def dataset_stats(
    *, db: Session, user: User, dataset_id: int, include_filtered: bool = True
) -> dict[str, Any]:
    """The dataset page's figures, from the cache while no record of the dataset changed since they were
    computed (app.datasets.freshness), else computed by `compute_dataset_stats` and cached."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    return datasets.cached_stats(
        db=db,
        dataset_id=dataset_id,
        variant=f"{FIGURES_VERSION}:" + (ALL_RECORDS if include_filtered else WITHOUT_FILTERED),
        compute=lambda: compute_dataset_stats(
            db=db, dataset_id=dataset_id, include_filtered=include_filtered
        ),
    )


def compute_dataset_stats(*, db: Session, dataset_id: int, include_filtered: bool) -> dict[str, Any]:
    """Counts by status, source and label, prompt/response length histograms, the nearest-neighbour ROUGE-L
    histogram and the most common leading words of instructions: one grouped scan plus two top-N queries
    (and a look-up of the dataset's generation jobs, for the cutoff of the figures they stored).

    `by_status` and `total` always count every record. The other figures leave out the records curation
    filtered unless `include_filtered`: filtered junk (a repeated "toolformer" prompt, say) would otherwise
    top the leading-words chart of the data that is actually kept.

    The nearest-neighbour histogram puts each record in one of three places, as the review page does
    (`app.review.service.nn_finding`): never compared (`nn_rouge_not_compared`: no dedup run or generation
    filter has scored it), compared but no record at or above the search cutoff (the "none ≥ 0.70" bucket, first in `nn_rouge` and
    described by `nn_rouge_none`; the 0.0 or partial figure stored for those is not a measurement), or a
    real score, in the decile buckets "0.0" ... "0.9"."""
    prompt_len = func.length(Record.instruction) + func.length(Record.input)
    score = Record.nn_score
    cutoff = _nn_cutoff(db, generation_cutoffs(db, dataset_id=dataset_id))
    below = and_(score.is_not(None), or_(score <= 0, score < cutoff))
    nn_bucket = case((score.is_(None), -1), (below, -2), else_=func.floor(score * 10))
    pb = _bucket_expr(prompt_len, LENGTH_EDGES).label("pb")
    ob = _bucket_expr(func.length(Record.output), LENGTH_EDGES).label("ob")
    nb = nn_bucket.label("nb")
    nc = case((below, cutoff), else_=None).label("nc")
    rows = db.execute(
        select(Record.status, Record.source, pb, ob, nb, nc, func.count())
        .where(Record.dataset_id == dataset_id)
        .group_by(Record.status, Record.source, pb, ob, nb, nc)
    ).all()
    by_status: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    prompt_hist = [0] * len(LENGTH_EDGES)
    output_hist = [0] * len(LENGTH_EDGES)
    nn_hist = [0] * 10
    not_compared = 0
    none_cutoffs: Counter[float | None] = Counter()
    for status, source, pb, ob, nb, nc, n in rows:
        by_status[status] += n
        if status == FILTERED and not include_filtered:
            continue
        by_source[source] += n
        prompt_hist[int(pb)] += n
        output_hist[int(ob)] += n
        if nb is None or int(nb) == -1:
            not_compared += n
        elif int(nb) == -2:
            none_cutoffs[float(nc) if nc is not None else None] += n
        else:
            nn_hist[min(int(nb), 9)] += n
    none_key, none_records = none_label(set(none_cutoffs)), sum(none_cutoffs.values())
    kept = [] if include_filtered else [Record.status != FILTERED]
    labels = db.execute(
        select(Record.label, func.count())
        .where(Record.dataset_id == dataset_id, Record.label.is_not(None), *kept)
        .group_by(Record.label)
        .order_by(func.count().desc())
        .limit(20)
    ).all()
    word = _first_word(db)
    verbs = db.execute(
        select(word, func.count())
        .where(Record.dataset_id == dataset_id, Record.instruction != "", *kept)
        .group_by(word)
        .order_by(func.count().desc())
        .limit(20)
    ).all()
    return {
        "total": sum(by_status.values()),
        "by_status": dict(by_status.most_common()),
        "by_source": dict(by_source.most_common(20)),
        "by_label": {str(k): int(v) for k, v in labels},
        "prompt_chars": {_edge_label(LENGTH_EDGES, i): n for i, n in enumerate(prompt_hist)},
        "output_chars": {_edge_label(LENGTH_EDGES, i): n for i, n in enumerate(output_hist)},
        "nn_rouge": {none_key: none_records, **{f"{i / 10:.1f}": n for i, n in enumerate(nn_hist)}},
        "nn_rouge_none": {
            "label": none_key,
            "records": none_records,
            "cutoffs": sorted(c for c in none_cutoffs if c is not None),
        },
        "nn_rouge_not_compared": not_compared,
        "leading_words": {str(w).strip(".,:;!?\"'()") or "(blank)": int(n) for w, n in verbs},
        "include_filtered": include_filtered,
    }


def dataset_page_figures(
    *, db: Session, user: User, dataset_id: int, include_filtered: bool, flagged_cap: int
) -> dict[str, Any]:
    """What the dataset page shows that scans the dataset's records: the stats, the 20 biggest near-duplicate
    groups and the flagged count (up to `flagged_cap`). Cached together, like `dataset_stats`, while no
    record of the dataset changes; a view then reads one row instead of scanning 100,000 records three times."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    return datasets.cached_stats(
        db=db,
        dataset_id=dataset_id,
        variant=f"page:{FIGURES_VERSION}:" + (ALL_RECORDS if include_filtered else WITHOUT_FILTERED),
        compute=lambda: {
            "stats": compute_dataset_stats(db=db, dataset_id=dataset_id, include_filtered=include_filtered),
            "groups": _duplicate_groups(db, dataset_id, GROUP_MIN_SCORE, 20),
            "flagged": records.count_flagged(db=db, dataset_id=dataset_id, cap=flagged_cap),
        },
    )


def count_matching(*, db: Session, user: User, dataset_id: int, flt: RecordFilter) -> int:
    """How many records a bulk action over this filter would change (told before it is applied)."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    return records.count_records(db=db, user=user, dataset_id=dataset_id, flt=flt)


@dataclass
class AnnotatorStats:
    user_id: int
    username: str
    decisions: int = 0
    accepted: int = 0
    rejected: int = 0
    skipped: int = 0
    active_minutes: float = 0.0
    assigned: int = 0
    assigned_done: int = 0
    last_at: str | None = None

    @property
    def per_minute(self) -> float | None:
        return round(self.decisions / self.active_minutes, 2) if self.active_minutes > 0 else None


def annotator_progress(*, db: Session, user: User, dataset_id: int) -> list[AnnotatorStats]:
    """Per annotator: decisions, records per minute of active review (gaps over 5 minutes are breaks)
    and assignment progress, from the timestamped review events."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    events = db.execute(
        select(ReviewEvent.user_id, ReviewEvent.action, ReviewEvent.at)
        .where(
            ReviewEvent.dataset_id == dataset_id,
            ReviewEvent.action.in_(DECISION_ACTIONS),
            ReviewEvent.undone.is_(False),
            ReviewEvent.user_id.is_not(None),
        )
        .order_by(ReviewEvent.id.desc())
        .limit(MAX_EVENTS)
    ).all()
    stats: dict[int, AnnotatorStats] = {}
    times: dict[int, list[datetime]] = defaultdict(list)
    for uid, action, at in events:
        if uid is None:
            continue
        s = stats.setdefault(uid, AnnotatorStats(uid, ""))
        s.decisions += 1
        s.accepted += action in ("accept", "accepted")
        s.rejected += action in ("reject", "rejected")
        s.skipped += action == "skip"
        times[uid].append(at)
    for uid, ts in times.items():
        ts.sort()
        gaps = [(b - a).total_seconds() for a, b in pairwise(ts)]
        typical = sorted(gaps)[len(gaps) // 2] if gaps else 10.0
        # The first decision of each sitting took about as long as a typical one.
        sittings = 1 + sum(g > IDLE_CAP_S for g in gaps)
        worked = sum(g for g in gaps if g <= IDLE_CAP_S) + sittings * min(typical, IDLE_CAP_S)
        stats[uid].active_minutes = round(worked / 60, 3)
        stats[uid].last_at = ts[-1].isoformat(timespec="seconds")
    for uid, done, n in db.execute(
        select(RecordAssignment.user_id, RecordAssignment.done, func.count())
        .where(RecordAssignment.dataset_id == dataset_id)
        .group_by(RecordAssignment.user_id, RecordAssignment.done)
    ).all():
        s = stats.setdefault(uid, AnnotatorStats(uid, ""))
        s.assigned += n
        s.assigned_done += n if done else 0
    names = dict(db.execute(select(User.id, User.username).where(User.id.in_(stats))).tuples().all())
    for s in stats.values():
        s.username = names.get(s.user_id, f"user {s.user_id}")
    return sorted(stats.values(), key=lambda s: s.username)


def kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa for two raters' binary (accept / reject) decisions on the same items."""
    n = len(pairs)
    if n == 0:
        return None
    po = sum(a == b for a, b in pairs) / n
    pa = sum(a for a, _ in pairs) / n
    pb = sum(b for _, b in pairs) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return 1.0 if po == 1.0 else 0.0
    return round((po - pe) / (1 - pe), 4)


@dataclass
class Agreement:
    pairs: list[dict[str, Any]] = field(default_factory=list)
    judge: list[dict[str, Any]] = field(default_factory=list)
    judge_threshold: float = 4.0
    # On candidate pairs (app.review.preferences.pairwise_agreement): which of two answers is better.
    preference_pairs: list[dict[str, Any]] = field(default_factory=list)
    preference_judge: list[dict[str, Any]] = field(default_factory=list)


def _votes(db: Session, dataset_id: int) -> dict[int, dict[int, bool]]:
    """record -> user -> accepted?, from assignment votes and the latest undone-free decision events."""
    votes: dict[int, dict[int, bool]] = defaultdict(dict)
    for rid, uid, decision in db.execute(
        select(RecordAssignment.record_id, RecordAssignment.user_id, RecordAssignment.decision).where(
            RecordAssignment.dataset_id == dataset_id, RecordAssignment.decision.is_not(None)
        )
    ).all():
        votes[rid][uid] = decision == "accepted"
    for rid, event_uid, action in db.execute(
        select(ReviewEvent.record_id, ReviewEvent.user_id, ReviewEvent.action)
        .where(
            ReviewEvent.dataset_id == dataset_id,
            ReviewEvent.action.in_(("accept", "reject", "accepted", "rejected")),
            ReviewEvent.undone.is_(False),
            ReviewEvent.user_id.is_not(None),
        )
        .order_by(ReviewEvent.id.desc())
        .limit(MAX_EVENTS)
    ).all():
        if event_uid is not None:
            votes[rid].setdefault(event_uid, action in ("accept", "accepted"))
    return votes


def agreement(*, db: Session, user: User, dataset_id: int, judge_threshold: float = 4.0) -> Agreement:
    """Pairwise agreement (share and Cohen's kappa) between annotators who decided the same records, and
    between each annotator and the LLM judge (judge accepts iff its score >= the threshold); the same on
    candidate pairs people and the judge compared (`preference_pairs`, `preference_judge`)."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    votes = _votes(db, dataset_id)
    by_pair: dict[tuple[int, int], list[tuple[bool, bool]]] = defaultdict(list)
    for per_user in votes.values():
        for a, b in combinations(sorted(per_user), 2):
            by_pair[(a, b)].append((per_user[a], per_user[b]))
    judged = dict(
        db.execute(
            select(Record.id, Record.judge_score).where(
                Record.dataset_id == dataset_id,
                Record.judge_score.is_not(None),
                Record.id.in_(list(votes)) if len(votes) < 30_000 else Record.reviewed_by.is_not(None),
            )
        )
        .tuples()
        .all()
    )
    by_judge: dict[int, list[tuple[bool, bool]]] = defaultdict(list)
    for rid, per_user in votes.items():
        score = judged.get(rid)
        if score is None:
            continue
        for uid, accepted in per_user.items():
            by_judge[uid].append((accepted, score >= judge_threshold))
    uids = {u for pair in by_pair for u in pair} | set(by_judge)
    names = dict(db.execute(select(User.id, User.username).where(User.id.in_(uids))).tuples().all())
    out = Agreement(judge_threshold=judge_threshold)
    out.preference_pairs, out.preference_judge = pairwise_agreement(db, dataset_id)
    for (a, b), pairs in sorted(by_pair.items()):
        out.pairs.append(
            {
                "a": names.get(a, str(a)),
                "b": names.get(b, str(b)),
                "records": len(pairs),
                "agree": round(sum(x == y for x, y in pairs) / len(pairs), 4),
                "kappa": kappa(pairs),
            }
        )
    for uid, pairs in sorted(by_judge.items(), key=lambda kv: names.get(kv[0], "")):
        out.judge.append(
            {
                "annotator": names.get(uid, str(uid)),
                "records": len(pairs),
                "agree": round(sum(x == y for x, y in pairs) / len(pairs), 4),
                "kappa": kappa(pairs),
            }
        )
    return out


# ---------------------------------------------------------------- near-duplicate groups


# A record is listed in, and decided with, its nearest neighbour's group from this ROUGE-L on: the same
# bound for both, so a group's decision changes exactly the members the page counted.
GROUP_MIN_SCORE = 0.7


def duplicate_groups(
    *, db: Session, user: User, dataset_id: int, min_score: float = GROUP_MIN_SCORE, limit: int = 50
) -> list[dict[str, Any]]:
    """Groups of records whose nearest neighbour (found by dedup) is the same record, biggest first."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    return _duplicate_groups(db, dataset_id, min_score, limit)


def _duplicate_groups(db: Session, dataset_id: int, min_score: float, limit: int) -> list[dict[str, Any]]:
    rows = db.execute(
        select(Record.nn_record_id, func.count(), func.max(Record.nn_score))
        .where(
            Record.dataset_id == dataset_id,
            Record.nn_record_id.is_not(None),
            Record.nn_score >= min_score,
        )
        .group_by(Record.nn_record_id)
        .order_by(func.count().desc(), Record.nn_record_id)
        .limit(limit)
    ).all()
    anchors = {
        r.id: r
        for r in db.scalars(select(Record).where(Record.id.in_([a for a, _, _ in rows if a is not None])))
    }
    return [
        {
            "anchor_id": a,
            "anchor_instruction": anchors[a].instruction[:300] if a in anchors else "",
            "anchor_status": anchors[a].status if a in anchors else "missing",
            "members": int(n),
            "max_score": round(float(s or 0.0), 4),
        }
        for a, n, s in rows
        if a is not None
    ]


def group_members(
    *, db: Session, user: User, dataset_id: int, anchor_id: int, min_score: float = GROUP_MIN_SCORE
) -> list[Record]:
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    return list(
        db.scalars(
            select(Record)
            .where(
                Record.dataset_id == dataset_id,
                Record.nn_record_id == anchor_id,
                Record.nn_score >= min_score,
            )
            .order_by(Record.nn_score.desc(), Record.id)
            .limit(1000)
        ).all()
    )


def decide_group(
    *,
    db: Session,
    user: User,
    dataset_id: int,
    anchor_id: int,
    status: str,
    include_anchor: bool,
    min_score: float = GROUP_MIN_SCORE,
) -> int:
    """Set the status of a whole near-duplicate group at once (the original too, if asked)."""
    members = group_members(db=db, user=user, dataset_id=dataset_id, anchor_id=anchor_id, min_score=min_score)
    if not members:
        raise NotFound(f"no near-duplicate group around record {anchor_id}")
    ids = [m.id for m in members] + ([anchor_id] if include_anchor else [])
    return records.bulk_set_status(
        db=db,
        user=user,
        dataset_id=dataset_id,
        flt=RecordFilter(ids=ids),
        status=status,
        reason="dup_group",
    )


# ---------------------------------------------------------------- preference pairs


def _split_conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last < 0:
        return messages, ""
    return messages[:last], str(messages[last].get("content", ""))


def _pair(original: RecordRevision, latest: RecordRevision, record_id: int) -> dict[str, Any] | None:
    if latest.messages:
        turns, chosen = _split_conversation(latest.messages)
        rejected = _split_conversation(original.messages)[1] if original.messages else original.output
        if chosen == rejected or not chosen:
            return None
        return {
            "prompt": turns,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "record_id": record_id,
            "versions": [original.version, latest.version],
        }
    if latest.output == original.output or not latest.output:
        return None
    prompt = f"{latest.instruction}\n\n{latest.input}" if latest.input else latest.instruction
    if latest.system:
        return {
            "system": latest.system,
            "prompt": prompt,
            "chosen": latest.output,
            "rejected": original.output,
            "record_id": record_id,
            "versions": [original.version, latest.version],
        }
    return {
        "prompt": prompt,
        "chosen": latest.output,
        "rejected": original.output,
        "record_id": record_id,
        "versions": [original.version, latest.version],
    }


def _confirmed(latest: RecordRevision, status: str, reviewed_at: datetime | None) -> bool:
    """A machine's revision (a rewrite job's: no editor) makes a pair only once a person confirmed it by
    accepting the record after it was written; a person's own edit is its confirmation."""
    return status == "accepted" and reviewed_at is not None and reviewed_at >= latest.edited_at


def preference_pairs(*, db: Session, user: User, dataset_id: int) -> Iterator[dict[str, Any]]:
    """DPO pairs from human edits: prompt (as edited), chosen = the latest edited response, rejected =
    the original one. Records a person rejected or curation filtered are left out. A machine's rewrite
    (app.generation.rewrite) counts once a person accepted the record after it (`_confirmed`)."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    last = 0
    while True:
        spans = db.execute(
            select(
                RecordRevision.record_id,
                func.min(RecordRevision.version),
                func.max(RecordRevision.version),
                Record.status,
                Record.reviewed_at,
            )
            .join(Record, Record.id == RecordRevision.record_id)
            .where(
                Record.dataset_id == dataset_id,
                Record.status.in_(("pending", "accepted")),
                RecordRevision.record_id > last,
            )
            .group_by(RecordRevision.record_id, Record.status, Record.reviewed_at)
            .having(func.max(RecordRevision.version) > func.min(RecordRevision.version))
            .order_by(RecordRevision.record_id)
            .limit(500)
        ).all()
        if not spans:
            return
        wanted = {(rid, v) for rid, lo, hi, _, _ in spans for v in (lo, hi)}
        revs = {
            (r.record_id, r.version): r
            for r in db.scalars(
                select(RecordRevision).where(RecordRevision.record_id.in_([rid for rid, *_ in spans]))
            )
            if (r.record_id, r.version) in wanted
        }
        for rid, lo, hi, status, reviewed_at in spans:
            latest = revs[(rid, hi)]
            if latest.edited_by is None and not _confirmed(latest, status, reviewed_at):
                continue
            pair = _pair(revs[(rid, lo)], latest, rid)
            if pair is not None:
                yield pair
        last = spans[-1][0]


def ranked_pairs(db: Session, dataset_id: int) -> Iterator[dict[str, Any]]:
    """DPO pairs from the candidates people, judges or an imported dataset ranked (app.preferences.pairs),
    as they stand now, in the rows' shape of `_pair`: plain text for one exchange, messages for a
    conversation. Records a person rejected or curation filtered are left out, as for edits."""
    last = 0
    while True:
        ids = list(
            db.scalars(
                select(PreferenceJudgment.record_id)
                .join(Record, Record.id == PreferenceJudgment.record_id)
                .where(
                    PreferenceJudgment.dataset_id == dataset_id,
                    PreferenceJudgment.superseded_by_id.is_(None),
                    PreferenceJudgment.record_id > last,
                    Record.status.in_(("pending", "accepted")),
                )
                .group_by(PreferenceJudgment.record_id)
                .order_by(PreferenceJudgment.record_id)
                .limit(500)
            )
        )
        if not ids:
            return
        found = preferred_pairs(db, ids)
        rows = {r.id: r for r in db.scalars(select(Record).where(Record.id.in_(list(found))))}
        for rid in ids:
            record = rows.get(rid)
            if record is None:
                continue
            turns, _ = final_prompt_and_answer(record)
            for p in found[rid]:
                source = {"record_id": rid, "by": p["by"], "candidates": [p["chosen_id"], p["rejected_id"]]}
                if record.messages:
                    yield {
                        "prompt": turns,
                        "chosen": [{"role": "assistant", "content": p["chosen"]}],
                        "rejected": [{"role": "assistant", "content": p["rejected"]}],
                        **source,
                    }
                    continue
                prompt = f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
                system = {"system": record.system} if record.system else {}
                yield {**system, "prompt": prompt, "chosen": p["chosen"], "rejected": p["rejected"], **source}
        last = ids[-1]


def preference_jsonl(*, db: Session, user: User, dataset_id: int) -> Iterator[str]:
    for pair in preference_pairs(db=db, user=user, dataset_id=dataset_id):
        yield json.dumps(pair, ensure_ascii=False) + "\n"
    for pair in ranked_pairs(db, dataset_id):
        yield json.dumps(pair, ensure_ascii=False) + "\n"

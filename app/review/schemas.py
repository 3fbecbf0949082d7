from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.records.schemas import Message, RecordFilter, Tags

DecisionAction = Literal["accept", "reject", "rate", "tag", "skip", "flag"]


NnStatus = Literal["not_compared", "below_cutoff", "found"]


class Neighbour(BaseModel):
    id: int
    score: float = Field(
        description="ROUGE-L F-measure between the two prompts (instruction and input), computed when listed."
    )
    instruction: str
    status: str
    relation: str = Field(
        description="nearest: the record the dedup job named as this one's nearest (when the machine's "
        "nn_status is below_cutoff, only the closest record it happened to score); points_here: a record "
        "whose nearest is this one; parent: the record this one was generated from."
    )


class Provenance(BaseModel):
    source: str
    teacher_model: str | None
    job_id: int | None
    job_kind: str | None
    parent_id: int | None
    parent_instruction: str | None
    operation: str | None
    round: int | None
    prompt_hash: str | None


class Advice(BaseModel):
    """A machine job's verdict on a record a person decided: stored beside the decision, never over it."""

    kind: str = Field(description="dedup | rules | judge")
    reason: str
    detail: str | None = None
    job_id: int | None = None


class Machine(BaseModel):
    """What curation found: the status reason, the rules that fired, the judge's score and rationale."""

    reason: str | None
    rules: list[dict[str, Any]]
    judge_score: float | None
    judge_rationale: str | None
    nn_score: float | None = Field(
        description="What the dedup job stored: a measurement only when nn_status is found (below the cutoff "
        "it is 0.0 or a partial figure)."
    )
    nn_record_id: int | None
    nn_status: NnStatus = Field(
        "not_compared",
        description="not_compared: no dedup run (or generation filter) scored it; below_cutoff: compared, but no record kept before it "
        "reached nn_cutoff (nothing lower is searched), shown as 'none ≥ cutoff'; found: nn_score is the "
        "real max ROUGE-L, to nn_record_id.",
    )
    nn_cutoff: float | None = Field(
        None,
        description="The search cutoff (threshold) of the dedup run or generation job that stored the "
        "figure, when known.",
    )
    label: str | None
    is_classification: bool | None
    labels: list[str]
    human_decided: bool = Field(False, description="A person accepted, rejected, edited or rated it.")
    advice: list[Advice] = Field(
        default_factory=list, description="What machine jobs would have done to this human-decided record."
    )


class ReviewCandidate(BaseModel):
    """One candidate response, numbered as the review page shows it (the number is its key)."""

    id: int
    number: int = Field(description="1-based position on the page: the key that chooses or ranks it.")
    content: str
    source: str = Field(description="teacher | run | person | import | original")
    model: str | None


class ReviewPreference(BaseModel):
    """The viewer's current judgment of the record's candidates."""

    kind: str = Field(description="pairwise | ranking")
    choice: str | None = Field(None, description="pairwise: a | b | tie | both_bad")
    candidate_ids: list[int]
    ranking: list[list[int]] | None = None
    summary: str = Field(description="In words, candidates by their number: 'prefers #2 over #1'.")


class ReviewItem(BaseModel):
    id: int
    dataset_id: int
    version: int
    instruction: str
    input: str
    output: str
    system: str | None
    messages: list[dict[str, Any]] | None
    status: str
    rating: int | None
    tags: list[str]
    flagged: bool
    assigned: bool
    provenance: Provenance
    machine: Machine
    neighbours: list[Neighbour]
    candidates: list[ReviewCandidate] = Field(
        default_factory=list, description="Candidate responses to compare (two side by side, or a ranking)."
    )
    my_preference: ReviewPreference | None = Field(None, description="Your current choice or ranking.")
    preference_advice: list[str] = Field(
        default_factory=list,
        description="Machines' and imported datasets' current verdicts on the candidates, in words (advice).",
    )


class QueuePage(BaseModel):
    items: list[ReviewItem]
    remaining_hint: int | None = Field(
        None, description="Pending assignments left for you (None when you review the open queue)."
    )


class DecisionIn(BaseModel):
    """One keyboard action. `prefetch_after`/`prefetch` refill the client's buffer in the same round trip."""

    action: DecisionAction
    version: int
    reason: str | None = Field(None, max_length=64)
    rating: int | None = Field(None, ge=1, le=5)
    tags: Tags | None = None
    note: str = Field("", max_length=2000)
    prefetch_after: int | None = Field(None, description="Highest record id the client already holds.")
    prefetch: int = Field(0, ge=0, le=20, description="How many further queue records to return.")
    compare: bool = Field(False, description="Prefetch from the compare queue (records with candidates).")


class RecordState(BaseModel):
    id: int
    version: int
    status: str
    rating: int | None
    tags: list[str]
    flagged: bool


class DecisionOut(BaseModel):
    record: RecordState
    next: list[ReviewItem]


class EditIn(BaseModel):
    version: int
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    messages: list[Message] | None = None
    note: str = Field("", max_length=2000)


class DiffPart(BaseModel):
    op: Literal["equal", "insert", "delete"]
    text: str


class RevisionDiff(BaseModel):
    version: int
    edited_by: str | None
    edited_at: str
    note: str
    changes: dict[str, list[DiffPart]] = Field(
        description="Per changed field, the diff from the version before."
    )


class HistoryEntry(BaseModel):
    """One line of a record's history: a text edit (with its diff) or a decision (accept, reject, rate, tag,
    flag, a vote, an undo), with who and when."""

    kind: Literal["edit", "decision"]
    action: str = Field(
        description="edit, or the decision's action: accept, reject, rate, tag, flag, undo..."
    )
    at: str
    by: str | None
    summary: str = Field(description="What changed, in words: 'status pending → accepted', 'rating — → 4'.")
    note: str = ""
    undone: bool = Field(False, description="Someone pressed undo on this decision afterwards.")
    version: int | None = Field(None, description="For an edit, the revision it made.")
    changes: dict[str, list[DiffPart]] = Field(
        default_factory=dict, description="For an edit, the diff of each changed field."
    )


class QueuePosition(BaseModel):
    """Where the review page opens in the annotator's queue: `before` queue records precede its first
    record, of `total` (the first record counts in `total` even when it is not in the queue)."""

    before: int
    total: int
    before_more: bool = Field(False, description="`before` is a lower bound: counting stopped at the cap.")
    total_more: bool = Field(False, description="`total` is a lower bound: counting stopped at the cap.")


class EditOut(BaseModel):
    record: RecordState
    history: list[RevisionDiff]
    timeline: list[HistoryEntry] = Field(
        default_factory=list, description="The record's whole history after the edit, newest first."
    )


class UndoOut(BaseModel):
    undone_action: str
    item: ReviewItem


class AssignIn(BaseModel):
    user_ids: list[int] = Field(min_length=1, max_length=1000)
    k: int = Field(1, ge=1, le=20, description="Annotators per record.")
    filter: RecordFilter = Field(default_factory=lambda: RecordFilter(status=["pending"]))
    limit: int = Field(10_000, ge=1, le=100_000)


class AssignOut(BaseModel):
    records: int
    assignments: int


class GroupDecisionIn(BaseModel):
    status: Literal["accepted", "rejected"]
    include_anchor: bool = Field(
        False, description="Also set the group's original (the record the others duplicate)."
    )
    min_score: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Members are the records whose nearest is the original at this ROUGE-L or more: use "
        "the min_score the groups were listed with.",
    )


class BulkOut(BaseModel):
    updated: int

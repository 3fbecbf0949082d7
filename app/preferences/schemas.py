"""API shapes of candidates and judgments."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.preferences.service import MAX_CANDIDATE_CHARS

Id = int
MAX_RANKED = 64


class CandidateCreate(BaseModel):
    """A person's own answer to the record's prompt, added as a candidate."""

    content: str = Field(min_length=1, max_length=MAX_CANDIDATE_CHARS, description="The response text.")
    note: str = Field("", max_length=2000, description="Why it was written (kept in the candidate's meta).")


class CandidateRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    record_id: int
    content: str
    source: str = Field(description="teacher | run | person | import | original")
    model: str | None = Field(description="Teacher model, training run, or importing format.")
    params: dict[str, Any] = Field(description="Sampling: teacher, temperature, top_p, seed, sample_index...")
    training_run_id: int | None
    user_id: int | None
    job_id: int | None
    meta: dict[str, Any]
    created_at: datetime


class PairwiseCreate(BaseModel):
    """A person's choice between two candidates of the record (keyboard: 1 / 2 / = / b)."""

    a_id: Id = Field(ge=1, le=2**62, description="The candidate shown first (left).")
    b_id: Id = Field(ge=1, le=2**62, description="The candidate shown second (right).")
    choice: Literal["a", "b", "tie", "both_bad"]
    rationale: str = Field("", max_length=20_000)


class RankingCreate(BaseModel):
    """A person's full ranking of 2+ candidates, best first; a list of ids is a group of ties."""

    ranking: list[Id | list[Id]] = Field(
        min_length=2,
        max_length=MAX_RANKED,
        description="Candidate ids best first, e.g. [12, [14, 15], 13]: 14 and 15 tied for second.",
    )
    rationale: str = Field("", max_length=20_000)


class JudgmentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    record_id: int
    kind: str = Field(description="pairwise | ranking | scores")
    source: str = Field(description="person | judge | import")
    candidate_ids: list[int]
    choice: str | None = Field(description="pairwise: a | b | tie | both_bad (a, b: candidate_ids[0], [1]).")
    ranking: list[list[int]] | None = Field(description="ranking: groups of candidate ids, best first.")
    scores: dict[str, int] | None = Field(description="scores: aspect -> 1..5.")
    rationale: str
    user_id: int | None
    job_id: int | None
    judge_model: str | None
    superseded_by_id: int | None
    meta: dict[str, Any]
    created_at: datetime


class RecordCandidates(BaseModel):
    record_id: int
    candidates: list[CandidateRead]
    judgments: list[JudgmentRead] = Field(
        description="Current judgments (people's and machines'); with history=true also superseded ones."
    )

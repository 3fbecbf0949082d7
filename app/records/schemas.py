from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

StatusLiteral = Literal["pending", "accepted", "rejected", "filtered"]


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("text may not contain NUL (\\u0000) characters")
    return value


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str

    _nul = field_validator("content")(_no_nul)


def _clean_tags(tags: list[str]) -> list[str]:
    cleaned = sorted({t.strip() for t in tags if t.strip()})
    if any(len(t) > 64 for t in cleaned):
        raise ValueError("a tag is at most 64 characters")
    return cleaned


# Tags as people type them: trimmed, blanks dropped, duplicates merged, sorted; each at most 64 characters.
Tags = Annotated[list[str], AfterValidator(_clean_tags)]


class RecordFilter(BaseModel):
    """A filter over a dataset's records, shared by listing, bulk actions, snapshots and curation jobs."""

    status: list[StatusLiteral] | None = None
    source: str | None = Field(None, description="Exact source, or a prefix ending in '*' (e.g. 'evol:*').")
    tag: str | None = None
    q: str | None = Field(None, description="Case-insensitive substring of instruction, input or output.")
    reason: str | None = None
    label: str | None = None
    flagged: bool | None = None
    job_id: int | None = None
    min_nn_score: float | None = Field(None, description="Nearest-neighbour ROUGE-L at least this.")
    max_nn_score: float | None = None
    min_judge_score: float | None = None
    max_judge_score: float | None = None
    ids: list[int] | None = Field(None, max_length=100_000)
    human_decided: bool | None = Field(
        None, description="Only records a person accepted, rejected, edited or rated (or only the others)."
    )
    disagreement: bool | None = Field(
        None,
        description=(
            "Only records a person kept (accepted, or rated/edited and still pending) that a machine job "
            "would have filtered: its reason is in `advice`, its detail in meta.advice."
        ),
    )


class RecordQuery(BaseModel):
    """The query parameters of GET /datasets/{id}/records: a filter (without `ids`) and the page wanted."""

    status: list[StatusLiteral] | None = None
    source: str | None = None
    tag: str | None = None
    q: str | None = Field(None, max_length=500)
    reason: str | None = None
    label: str | None = None
    flagged: bool | None = None
    job_id: int | None = None
    min_nn_score: float | None = None
    max_nn_score: float | None = None
    min_judge_score: float | None = None
    max_judge_score: float | None = None
    human_decided: bool | None = None
    disagreement: bool | None = None
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = None
    desc: bool = False

    def filter(self) -> RecordFilter:
        """The RecordFilter these parameters describe."""
        return RecordFilter.model_validate(self.model_dump(exclude={"limit", "cursor", "desc"}))


class RecordRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    dataset_id: int
    instruction: str
    input: str
    output: str
    system: str | None
    messages: list[dict[str, Any]] | None
    status: str
    reason: str | None
    source: str
    parent_id: int | None
    job_id: int | None
    teacher_model: str | None
    tags: list[str]
    rating: int | None
    label: str | None
    is_classification: bool | None
    judge_score: float | None
    nn_score: float | None
    nn_record_id: int | None
    meta: dict[str, Any]
    version: int
    flagged: bool
    human_decided: bool
    advice: str | None
    created_at: datetime
    updated_at: datetime


class RecordPage(BaseModel):
    items: list[RecordRead]
    next_cursor: str | None


class RecordCreate(BaseModel):
    instruction: str = ""
    input: str = ""
    output: str = ""
    system: str | None = None
    messages: list[Message] | None = None
    tags: list[str] = Field(default_factory=list)
    label: str | None = None


class RecordUpdate(BaseModel):
    """An edit. `version` is the version you loaded: a stale edit gets 409 instead of overwriting someone."""

    version: int
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    system: str | None = None
    messages: list[Message] | None = None
    tags: Tags | None = None
    rating: int | None = Field(None, ge=1, le=5)
    label: str | None = None
    status: StatusLiteral | None = None
    reason: str | None = Field(None, max_length=64)
    note: str = Field("", max_length=2000)

    _nul = field_validator("instruction", "input", "output", "system")(_no_nul)


class BulkStatus(BaseModel):
    filter: RecordFilter
    status: StatusLiteral
    reason: str | None = Field(None, max_length=64)


class BulkResult(BaseModel):
    updated: int


class RevisionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    instruction: str
    input: str
    output: str
    system: str | None
    messages: list[dict[str, Any]] | None
    edited_by: int | None
    edited_at: datetime
    note: str

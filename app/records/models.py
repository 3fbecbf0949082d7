from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, BigId, TimestampMixin, UTCDateTime, utcnow


class RecordStatus(enum.StrEnum):
    pending = "pending"
    accepted = "accepted"
    rejected = "rejected"
    filtered = "filtered"


class Record(TimestampMixin, Base):
    __tablename__ = "records"
    __table_args__ = (
        # Idempotent writes: a job re-delivered after a crash re-inserts the same keys, which are ignored.
        UniqueConstraint("dataset_id", "gen_key", name="uq_records_dataset_gen_key"),
        Index("ix_records_dataset_status_id", "dataset_id", "status", "id"),
        Index("ix_records_dataset_id_id", "dataset_id", "id"),
        # "Which records chose this one as nearest neighbour": the review page's near-duplicate panel.
        Index("ix_records_dataset_nn_record", "dataset_id", "nn_record_id"),
        # Partial: few records carry advice (human-decided ones a machine job disagreed with).
        Index(
            "ix_records_dataset_advice",
            "dataset_id",
            "advice",
            postgresql_where=text("advice IS NOT NULL"),
            sqlite_where=text("advice IS NOT NULL"),
        ),
        # Partial: imported rows have no parent, and an index entry per row would slow every import.
        Index(
            "ix_records_parent_id",
            "parent_id",
            postgresql_where=text("parent_id IS NOT NULL"),
            sqlite_where=text("parent_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    instruction: Mapped[str] = mapped_column(Text, default="")
    input: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text, default="")
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    messages: Mapped[list[Any] | None] = mapped_column(nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=RecordStatus.pending.value)
    # Why the status is what it is: a rule code, "rouge_dup", "judge_below", "human"...
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str] = mapped_column(String(64), default="human")
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("records.id", ondelete="SET NULL"), nullable=True
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    teacher_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    prompt_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gen_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    rating: Mapped[int | None] = mapped_column(nullable=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    is_classification: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    judge_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    nn_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    nn_record_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(default=1)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    locked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reviewed_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A person accepted, rejected, edited or rated this record (DESIGN rule 7): machine jobs leave its
    # status alone unless a curator asks otherwise for that job (`override_human`), and record their
    # verdict as advice instead.
    human_decided: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The reason a machine job would have filtered this human-decided record (judge_below, rouge_dup, a
    # rule code); meta["advice"] keeps each job kind's verdict with its detail. NULL: no machine objects.
    advice: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RecordTag(Base):
    """Tags as rows, so that filtering by tag is the same indexed query on SQLite and PostgreSQL."""

    __tablename__ = "record_tags"

    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))

    __table_args__ = (Index("ix_record_tags_dataset_tag", "dataset_id", "tag", "record_id"),)


class RecordRevision(Base):
    """Every version of a record's content. Version 1 (the original) is stored on the first edit."""

    __tablename__ = "record_revisions"
    __table_args__ = (UniqueConstraint("record_id", "version", name="uq_record_revisions_record_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column()
    instruction: Mapped[str] = mapped_column(Text)
    input: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    messages: Mapped[list[Any] | None] = mapped_column(nullable=True)
    edited_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    edited_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    note: Mapped[str] = mapped_column(Text, default="")


class ReviewEvent(Base):
    """One annotator decision (accept, reject, rate, skip, undo...), timestamped for speed and agreement stats."""

    __tablename__ = "review_events"
    __table_args__ = (Index("ix_review_events_dataset_user_at", "dataset_id", "user_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    undone: Mapped[bool] = mapped_column(Boolean, default=False)


class RecordAssignment(Base):
    __tablename__ = "record_assignments"

    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rating: Mapped[int | None] = mapped_column(nullable=True)

    __table_args__ = (Index("ix_record_assignments_user_dataset_done", "user_id", "dataset_id", "done"),)

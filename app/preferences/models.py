"""Preference data: candidate responses to a record's prompt, and judgments (by people or machines) over them.

A record keeps its own ``output`` (the supervised answer); candidates are the alternatives a preference pair is
made from. A judgment names the candidates it compares and its outcome; judgments are never updated in place:
a new judgment by the same person (or the same judge on the same candidates) supersedes the earlier one by
setting ``superseded_by_id`` on it, so the history stays and "current" is ``superseded_by_id IS NULL``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, BigId, UTCDateTime, utcnow


class CandidateSource(enum.StrEnum):
    teacher = "teacher"  # a teacher LLM through the gateway (respond job)
    run = "run"  # a training run's adapter (or a base model) through the evaluation generator
    person = "person"  # written by a person in the UI or the API
    imported = "import"  # a preference dataset's chosen/rejected/candidates
    original = "original"  # the record's own output, copied in so it can be ranked with the others


class JudgmentKind(enum.StrEnum):
    pairwise = "pairwise"  # candidate_ids = [a, b]; choice in PAIRWISE_CHOICES
    ranking = "ranking"  # ranking = [[best ids...], [next ids...], ...]: groups are ties
    scores = "scores"  # candidate_ids = [one]; scores = {aspect: 1..5}


class JudgmentSource(enum.StrEnum):
    person = "person"  # user_id set
    judge = "judge"  # job_id and judge_model set
    imported = "import"  # from a preference dataset (job_id of the import)


PAIRWISE_CHOICES = ("a", "b", "tie", "both_bad")
# The UltraFeedback aspects (Cui et al. 2023), each rated 1-5.
ASPECTS = ("helpfulness", "honesty", "instruction_following", "harmlessness")


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        # Idempotent writes: a resumed respond job re-inserts the same (record, gen_key) and is ignored.
        # gen_key is NULL for a person's candidate (NULLs never collide).
        UniqueConstraint("record_id", "gen_key", name="uq_candidates_record_gen_key"),
        Index("ix_candidates_dataset_record", "dataset_id", "record_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    # The response text; for a multi-turn record, the final assistant turn.
    content: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    # Teacher model, training run name / adapter, or the importing format: who produced it.
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Sampling: temperature, top_p, seed, max_tokens, sample index...
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    gen_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # tokens, prompt hash, finish reason...: detail that is not worth a column.
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PreferenceJudgment(Base):
    __tablename__ = "preference_judgments"
    __table_args__ = (
        # Idempotent machine writes (gen_key = "<job>:<kind>:<candidates>"); people's judgments have none.
        UniqueConstraint("record_id", "gen_key", name="uq_preference_judgments_record_gen_key"),
        Index("ix_preference_judgments_dataset_record", "dataset_id", "record_id"),
        # Partial: the current judgments, which pair derivation and agreement read.
        Index(
            "ix_preference_judgments_current",
            "record_id",
            "source",
            postgresql_where=text("superseded_by_id IS NULL"),
            sqlite_where=text("superseded_by_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    # pairwise: [a, b]; ranking: every ranked candidate; scores: [the candidate scored].
    candidate_ids: Mapped[list[Any]] = mapped_column()
    choice: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ranking: Mapped[list[Any] | None] = mapped_column(nullable=True)
    scores: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    rationale: Mapped[str] = mapped_column(Text, default="")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    judge_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    gen_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Machine detail: both orders' verdicts, position consistency, raw scores per order...
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    superseded_by_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

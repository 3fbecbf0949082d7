"""Evaluations: systems answering a frozen prompt set, a judge comparing them, the results."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, BigId, TimestampMixin


class Evaluation(TimestampMixin, Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # The prompt set: one of the two. A snapshot may be narrowed to its seeded validation split.
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True, index=True
    )
    snapshot_id: Mapped[int | None] = mapped_column(
        ForeignKey("snapshots.id", ondelete="SET NULL"), nullable=True, index=True
    )
    split: Mapped[str] = mapped_column(String(16), default="all")
    judge_teacher: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    results: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)


class EvaluationSystem(Base):
    __tablename__ = "evaluation_systems"
    __table_args__ = (UniqueConstraint("evaluation_id", "name", name="uq_evaluation_systems_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # base | run | teacher
    base_model: Mapped[str | None] = mapped_column(String(500), nullable=True)
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    teacher: Mapped[str | None] = mapped_column(String(200), nullable=True)


class EvaluationPrompt(Base):
    """The prompt set as it was when the evaluation started: a dataset may change under a running one."""

    __tablename__ = "evaluation_prompts"
    __table_args__ = (UniqueConstraint("evaluation_id", "prompt_id", name="uq_evaluation_prompts_prompt"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column()
    prompt_id: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[int | None] = mapped_column(nullable=True)
    text: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[Any]] = mapped_column()
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reference: Mapped[str | None] = mapped_column(Text, nullable=True)


class EvaluationAnswer(Base):
    __tablename__ = "evaluation_answers"
    __table_args__ = (UniqueConstraint("system_id", "prompt_id", name="uq_evaluation_answers_prompt"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    system_id: Mapped[int] = mapped_column(ForeignKey("evaluation_systems.id", ondelete="CASCADE"))
    prompt_id: Mapped[str] = mapped_column(String(64))
    answer: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int | None] = mapped_column(nullable=True)


class EvaluationVerdict(Base):
    """A stored PairVerdict or ScoreVerdict (``model_dump(mode="json")``), one per comparison: handed back
    to app.pipeline.pairwise as ``done`` on resume, and exported."""

    __tablename__ = "evaluation_verdicts"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "kind", "key", name="uq_evaluation_verdicts_key"),
        Index("ix_evaluation_verdicts_evaluation_kind", "evaluation_id", "kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))  # pair | score
    key: Mapped[str] = mapped_column(String(600))
    verdict: Mapped[dict[str, Any]] = mapped_column()

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, BigId, TimestampMixin, UTCDateTime, utcnow


class Dataset(TimestampMixin, Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_datasets_project_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(16), default="en")
    description: Mapped[str] = mapped_column(Text, default="")
    guidelines: Mapped[str] = mapped_column(Text, default="")
    # Per-dataset curation settings (rule config, dedup threshold...), see docs/curation.md.
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    # Goes up by one with every committed change to its records' stats columns (app.datasets.freshness):
    # part of the stamp that tells whether the dataset page's cached stats are current.
    records_rev: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class DatasetStatsCache(Base):
    """The dataset page's stats as last computed, valid while the dataset's stamp is `stamp`."""

    __tablename__ = "dataset_stats_cache"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    # Which figures: the charts over every record, or without the filtered ones.
    variant: Mapped[str] = mapped_column(String(32), primary_key=True)
    stamp: Mapped[str] = mapped_column(String(100))
    # JSON as text: the charts' order is the stored order (JSONB would sort the keys).
    stats: Mapped[str] = mapped_column(Text)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# Registered wherever the models are loaded (API, workers, CLI): notes record changes for the stamp.
from app.datasets import freshness  # noqa: E402, F401

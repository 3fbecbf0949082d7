from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, BigId, TimestampMixin


class Snapshot(TimestampMixin, Base):
    """An immutable set of record versions. Export and training read snapshots, never live records."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("dataset_id", "name", name="uq_snapshots_dataset_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    record_count: Mapped[int] = mapped_column(default=0)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)


class SnapshotItem(Base):
    __tablename__ = "snapshot_items"

    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"), primary_key=True)
    record_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    record_version: Mapped[int] = mapped_column()
    # The record's content as it was: a snapshot stays identical when records are edited later.
    content: Mapped[dict[str, Any]] = mapped_column()

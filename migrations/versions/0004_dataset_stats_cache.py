"""dataset page stats cache: datasets.records_rev and the dataset_stats_cache table

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

The dataset page's stats are cached under a stamp (records_rev, record count, highest record id); see
app/datasets/freshness.py. Existing datasets start at revision 0 with nothing cached.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.base import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("records_rev", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    op.create_table(
        "dataset_stats_cache",
        sa.Column("dataset_id", BigId, nullable=False),
        sa.Column("variant", sa.String(length=32), nullable=False),
        sa.Column("stamp", sa.String(length=100), nullable=False),
        sa.Column("stats", sa.Text(), nullable=False),
        sa.Column("computed_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_stats_cache_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset_id", "variant", name=op.f("pk_dataset_stats_cache")),
    )


def downgrade() -> None:
    op.drop_table("dataset_stats_cache")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("records_rev")

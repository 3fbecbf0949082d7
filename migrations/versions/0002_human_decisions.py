"""records: human_decided and advice (a person's decision outranks a machine's)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("human_decided", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("advice", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_records_dataset_advice",
            ["dataset_id", "advice"],
            unique=False,
            postgresql_where=sa.text("advice IS NOT NULL"),
            sqlite_where=sa.text("advice IS NOT NULL"),
        )
    # Records people already decided: reviewed (accept/reject, votes, bulk), rated, or edited by someone.
    op.execute(
        """
        UPDATE records SET human_decided = TRUE
        WHERE reviewed_by IS NOT NULL
           OR rating IS NOT NULL
           OR reason IN ('human', 'consensus', 'bulk')
           OR EXISTS (
               SELECT 1 FROM record_revisions rr WHERE rr.record_id = records.id AND rr.edited_by IS NOT NULL
           )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_dataset_advice")
        batch_op.drop_column("advice")
        batch_op.drop_column("human_decided")

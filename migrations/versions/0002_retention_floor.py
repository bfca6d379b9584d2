"""retention floor

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 06:21:40.739533
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retention_floor",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("purged_before", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_retention_floor_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_floor")),
    )


def downgrade() -> None:
    op.drop_table("retention_floor")

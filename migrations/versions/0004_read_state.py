"""read state: when each notification was read, and each student's unread count

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 06:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "notifications",
        sa.Column("read_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
    )
    op.add_column(
        "student_sequences",
        sa.Column("unread", sa.BigInteger(), server_default="0", nullable=False),
    )
    # Everything retained so far counts as unread.
    op.execute("""
        UPDATE student_sequences AS s SET unread = (
            SELECT count(*) FROM notifications AS n
            WHERE n.tenant_id = s.tenant_id AND n.student_id = s.student_id
        )
    """)


def downgrade() -> None:
    op.drop_column("student_sequences", "unread")
    op.drop_column("notifications", "read_at")

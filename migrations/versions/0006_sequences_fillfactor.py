"""student sequences keep room on each page, so a publish updates them in place

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 11:50:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every publish updates each recipient's row. With free room on its page the new row
    # version stays there (a HOT update: no new primary key entry), which halves the cost of
    # a 10,000-student publish's sequence upserts. Rows already written move to roomier
    # pages as they are updated; VACUUM FULL student_sequences applies it at once.
    op.execute("ALTER TABLE student_sequences SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE student_sequences RESET (fillfactor)")

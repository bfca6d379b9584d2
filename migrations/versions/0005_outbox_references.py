"""outbox rows name their notifications rather than carry a copy of them

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 08:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "outbox", sa.Column("notification_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True)
    )
    # Rows not yet sent: find the notifications each body carried (a tenant's student and
    # sequence number name one).
    op.execute("""
        UPDATE outbox AS o SET notification_ids = (
            SELECT coalesce(array_agg(n.id ORDER BY n.id), '{}')
            FROM jsonb_array_elements(convert_from(o.body, 'UTF8')::jsonb -> 'notifications') AS e
            JOIN notifications AS n
              ON n.tenant_id = convert_from(o.body, 'UTF8')::jsonb ->> 'tenantId'
             AND n.student_id = e ->> 'studentId'
             AND n.seq = (e ->> 'id')::bigint
        )
    """)
    op.alter_column("outbox", "notification_ids", nullable=False)
    op.drop_column("outbox", "body")


def downgrade() -> None:
    op.add_column("outbox", sa.Column("body", sa.LargeBinary(), nullable=True))
    # The message as the earlier version sent it, from the notifications it names.
    op.execute("""
        UPDATE outbox AS o SET body = (
            SELECT convert_to(json_build_object(
                'tenantId', min(n.tenant_id),
                'notifications', json_agg(json_build_object(
                    'id', n.seq::text, 'studentId', n.student_id,
                    'assignmentId', n.assignment_id, 'grade', n.grade,
                    'teacherComment', n.teacher_comment, 'courseId', n.course_id,
                    'assignmentTitle', n.assignment_title, 'publishedAt', n.published_at
                ) ORDER BY n.id),
                'unread', '{}'::json
            )::text, 'UTF8')
            FROM notifications AS n WHERE n.id = ANY(o.notification_ids)
            HAVING count(*) > 0
        )
    """)
    op.execute("DELETE FROM outbox WHERE body IS NULL")  # every notification was purged
    op.alter_column("outbox", "body", nullable=False)
    op.drop_column("outbox", "notification_ids")

"""tenants and publisher keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 06:27:05.081306
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "publisher_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publisher_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_publisher_keys_key_hash")),
    )
    op.add_column(
        "notifications",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
    )
    op.add_column("notifications", sa.Column("published_by", sa.String(length=64), nullable=True))
    op.drop_index(op.f("ix_notifications_student_id_seq"), table_name="notifications")
    op.create_index(
        op.f("ix_notifications_tenant_id_student_id_seq"),
        "notifications",
        ["tenant_id", "student_id", "seq"],
        unique=True,
    )
    op.add_column(
        "student_sequences",
        sa.Column("tenant_id", sa.String(length=64), server_default="default", nullable=False),
    )
    op.drop_constraint("pk_student_sequences", "student_sequences", type_="primary")
    op.create_primary_key("pk_student_sequences", "student_sequences", ["tenant_id", "student_id"])


def downgrade() -> None:
    op.drop_constraint("pk_student_sequences", "student_sequences", type_="primary")
    op.create_primary_key("pk_student_sequences", "student_sequences", ["student_id"])
    op.drop_column("student_sequences", "tenant_id")
    op.drop_index(op.f("ix_notifications_tenant_id_student_id_seq"), table_name="notifications")
    op.create_index(
        op.f("ix_notifications_student_id_seq"), "notifications", ["student_id", "seq"], unique=True
    )
    op.drop_column("notifications", "published_by")
    op.drop_column("notifications", "tenant_id")
    op.drop_table("publisher_keys")

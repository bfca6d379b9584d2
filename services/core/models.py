"""The tables. Event ids are per-student sequence numbers, so "after id X" is a range scan.
A student is known by tenant (school) and student id: the same id in two tenants is two
students."""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Identity,
    Index,
    MetaData,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.core.tenancy import DEFAULT_TENANT

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Timestamp = TIMESTAMP(timezone=True)
TenantId = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Notification(Base):
    """Partitioned by the hour of publishing (UTC), so that retention drops an expired hour
    whole (migration 0007): a partition's table is notifications_pYYYYMMDDHH, created ahead
    by the retention worker; an hour published without one lands in notifications_default.
    A student's (tenant, student, seq) is unique by the sequence row's lock, not by a
    constraint: a partitioned table's unique keys must hold published_at."""

    __tablename__ = "notifications"
    __table_args__ = (
        # Replay and the missed endpoint: one student's events after a sequence number.
        Index(None, "tenant_id", "student_id", "seq"),
        # Retention: everything published before a cut-off.
        Index(None, "published_at"),
        {"postgresql_partition_by": "RANGE (published_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(TenantId, server_default=DEFAULT_TENANT)
    student_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    assignment_id: Mapped[str] = mapped_column(String(128))
    grade: Mapped[Any] = mapped_column(JSONB)  # a string or a number, kept as given
    teacher_comment: Mapped[str | None] = mapped_column(Text)
    course_id: Mapped[str | None] = mapped_column(String(128))
    assignment_title: Mapped[str | None] = mapped_column(Text)
    # clock_timestamp(), not now(): taken after the student's sequence row is locked,
    # so a student's events are in the same order by time as by sequence.
    published_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=text("clock_timestamp()"), primary_key=True
    )
    published_by: Mapped[str | None] = mapped_column(String(64))  # the publisher key's id
    read_at: Mapped[datetime | None] = mapped_column(Timestamp)  # when the student read it


class StudentSequence(Base):
    """The last sequence number given to each student. Its row lock orders a student's
    publishes, so sequences commit in order and without gaps. Never purged: a restarted
    sequence would make a client's Last-Event-ID skip new events."""

    __tablename__ = "student_sequences"
    # Room on each page for the next version of its rows: see migration 0006.
    __table_args__ = {"postgresql_with": {"fillfactor": 50}}

    tenant_id: Mapped[str] = mapped_column(
        TenantId, primary_key=True, server_default=DEFAULT_TENANT
    )
    student_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    # Retained notifications not yet read. Whatever changes it (publish, read, retention)
    # takes this row's lock first, so the count stays exact under concurrency.
    unread: Mapped[int] = mapped_column(BigInteger, server_default="0")


class PurgedUnread(Base):
    """What the unread counts still owe a dropped partition: its unread notifications per
    student, recorded as the partition is dropped and taken off the counts in batches."""

    __tablename__ = "purged_unread"

    tenant_id: Mapped[str] = mapped_column(TenantId, primary_key=True)
    student_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    unread: Mapped[int] = mapped_column(BigInteger)


class OutboxMessage(Base):
    """A broker message committed with its notifications and deleted once RabbitMQ confirms
    it, so a grade that got a 201 is sent even if the broker was down at that moment. It
    names the notifications (one shard's of one publish) rather than carry a copy: the
    publish statement encodes the message it sends, and the relay loop encodes it again
    from the notifications."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    routing_key: Mapped[str] = mapped_column(String(255))
    notification_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("now()"))


class IdempotencyKey(Base):
    """The first answer to a publish carrying an Idempotency-Key, per publisher key."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index(None, "created_at"),)

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the API key
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[Any | None] = mapped_column(JSONB)  # written in the claiming transaction
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("now()"))


class RetentionFloor(Base):
    """How far the retention worker has purged: everything published before
    `purged_before` is gone. One row."""

    __tablename__ = "retention_floor"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, default=1)
    purged_before: Mapped[datetime] = mapped_column(Timestamp)


class PublisherKey(Base):
    """An API key a gradebook publishes with. Only its SHA-256 is kept (the key is 256
    random bits, so a slow hash would add nothing); `prefix` lets people tell keys apart."""

    __tablename__ = "publisher_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(TenantId)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("now()"))
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)

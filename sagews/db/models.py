"""The sagews schema: SQLAlchemy 2 typed models.

Every change here needs a migration in ``sagews/db/migrations/versions`` (tests/db checks that the
migrated schema and these models agree, on PostgreSQL and SQLite). Conventions:

* timestamps are timezone-aware UTC (:class:`UTCDateTime`), set by Python and by the server default;
* foreign keys from per-workspace rows cascade on delete; ``workspaces.worker_id`` becomes NULL
  when its worker row goes;
* enums are VARCHAR + CHECK constraints (no PostgreSQL enum types: adding a value stays a simple
  migration);
* constraint names follow ``NAMING`` so migrations can refer to them.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sagews.db.types import BigIntPK, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime()}  # noqa: RUF012


def _created() -> Any:
    return mapped_column(UTCDateTime(), default=utcnow, server_default=func.now(), nullable=False)


class Role(enum.StrEnum):
    owner = "owner"
    editor = "editor"
    viewer = "viewer"


class WorkerState(enum.StrEnum):
    up = "up"  # accepting new workspaces
    draining = "draining"  # keeps its sessions, gets no new ones
    down = "down"  # missed heartbeats or stopped


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-cased
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2id; NULL: cannot log in
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created: Mapped[dt.datetime] = _created()
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # fairness caps (migration 0003); NULL: the backend's defaults (max_open_workspaces, max_stored_mb)
    max_open_workspaces: Mapped[int | None] = mapped_column(Integer)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)

    sessions: Mapped[list[AuthSession]] = relationship(back_populates="account", passive_deletes=True)


class AuthSession(Base):
    """A login session. Only the SHA-256 of the cookie token is stored."""

    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex sha256 of the token
    account_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    created: Mapped[dt.datetime] = _created()
    expires: Mapped[dt.datetime] = mapped_column(index=True)
    last_seen: Mapped[dt.datetime | None]
    ip: Mapped[str | None] = mapped_column(String(45))  # IPv4 or IPv6 text
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    account: Mapped[Account] = relationship(back_populates="sessions")


class Worker(Base):
    __tablename__ = "workers"
    __table_args__ = (UniqueConstraint("address", "port"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)  # workspaces it may hold open
    heartbeat: Mapped[dt.datetime | None] = mapped_column(index=True)
    state: Mapped[WorkerState] = mapped_column(
        Enum(WorkerState, name="worker_state", native_enum=False, create_constraint=True, length=16),
        default=WorkerState.down,
        server_default=WorkerState.down.value,
    )
    version: Mapped[str | None] = mapped_column(String(64))
    load: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # open sessions/capacity


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # str(uuid4())
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("accounts.id"), index=True)
    created: Mapped[dt.datetime] = _created()
    updated: Mapped[dt.datetime] = _created()
    last_activity: Mapped[dt.datetime | None] = mapped_column(index=True)
    head_commit: Mapped[str | None] = mapped_column(String(64))  # git commit id of the newest bundle
    worker_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("workers.id", ondelete="SET NULL"), index=True
    )  # where it is open now (NULL: closed)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    deleted_at: Mapped[dt.datetime | None] = mapped_column(index=True)  # purged purge_after_days later

    collaborators: Mapped[list[Collaborator]] = relationship(
        back_populates="workspace", passive_deletes=True, cascade="all, delete-orphan"
    )


class Collaborator(Base):
    __tablename__ = "collaborators"

    workspace_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )  # the primary key (workspace_id, account_id) is the unique pair
    account_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[Role] = mapped_column(
        Enum(Role, name="collaborator_role", native_enum=False, create_constraint=True, length=16)
    )
    created: Mapped[dt.datetime] = _created()

    workspace: Mapped[Workspace] = relationship(back_populates="collaborators")


class WorkspaceBundle(Base):
    """One git bundle of a workspace's history; ``seq`` 0 is a full bundle, later ones are incremental
    on top of ``parent_seq`` (repacking replaces a chain by a new full bundle)."""

    __tablename__ = "workspace_bundles"
    __table_args__ = (UniqueConstraint("workspace_id", "seq"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(36), ForeignKey("workspaces.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    parent_seq: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column("bytes", LargeBinary)  # column "bytes"
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    commit: Mapped[str] = mapped_column(String(64))  # head commit contained in this bundle
    created: Mapped[dt.datetime] = _created()


class Publication(Base):
    __tablename__ = "publications"
    __table_args__ = (UniqueConstraint("workspace_id", "path"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(36), ForeignKey("workspaces.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    html: Mapped[str] = mapped_column(Text)
    created: Mapped[dt.datetime] = _created()
    updated: Mapped[dt.datetime] = _created()


class LogRecord(Base):
    """A log record stored by the log server. ``rid`` is generated by the client; its uniqueness
    makes inserts idempotent, so retries, failover and spool replays never store a record twice."""

    __tablename__ = "log_records"
    __table_args__ = (
        Index("ix_log_records_service_ts", "service", "ts"),
        Index("ix_log_records_host_ts", "host", "ts"),
        # warnings and errors only (migration 0002): most records are INFO, whose index entries
        # would cost every insert and never be selective
        Index("ix_log_records_problems", "id", postgresql_where=text("level >= 30"),
              sqlite_where=text("level >= 30")),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)  # arrival order, for tailing
    rid: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[dt.datetime] = mapped_column(index=True)  # when the record was made (client clock)
    received: Mapped[dt.datetime] = _created()  # when the log server stored it
    service: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    level: Mapped[int] = mapped_column(SmallInteger)  # logging levelno (10 DEBUG .. 50 CRITICAL)
    logger: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    exc: Mapped[str | None] = mapped_column(Text)  # formatted traceback
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

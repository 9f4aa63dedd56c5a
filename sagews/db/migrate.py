"""Run the Alembic migrations kept in this package, programmatically.

from sagews.db.migrate import upgrade
upgrade("postgresql://...")          # or an Engine / Connection
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from sagews.db.engine import make_engine, normalize_url

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).render_as_string(hide_password=False))
    return cfg


def _with_connection(target: str | Engine | Connection, action: str, revision: str) -> None:
    if isinstance(target, Connection):
        cfg = alembic_config()
        cfg.attributes["connection"] = target
        getattr(command, action)(cfg, revision)
        return
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        if isinstance(target, str):
            engine.dispose()


def upgrade(target: str | Engine | Connection, revision: str = "head") -> None:
    _with_connection(target, "upgrade", revision)


def downgrade(target: str | Engine | Connection, revision: str) -> None:
    _with_connection(target, "downgrade", revision)


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(target: str | Engine) -> str | None:
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if isinstance(target, str):
            engine.dispose()

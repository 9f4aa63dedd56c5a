"""The sagews database: typed models, Alembic migrations, pooled engines, async bridge.

See docs/database.md.
"""

from sagews.db.config import DBConfig
from sagews.db.engine import Database, make_engine
from sagews.db.migrate import upgrade

__all__ = ["DBConfig", "Database", "make_engine", "upgrade"]

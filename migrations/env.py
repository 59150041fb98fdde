"""Alembic environment for the cachekeeper manifest.

cachekeeper runs migrations in-process (``Manifest.upgrade``) and hands over its own connection;
the ``alembic`` command line works too, with ``-x url=...`` or ``sqlalchemy.url`` set.
"""

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import cachekeeper.manifest.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things, alembic's batch mode copies the table.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as connection:
        run_migrations(connection)
        connection.commit()

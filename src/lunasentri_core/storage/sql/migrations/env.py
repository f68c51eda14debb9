"""Alembic environment: always runs on a connection handed over by ``SqlStorage.migrate``.

There is no ``alembic.ini``: :func:`lunasentri_core.storage.sql.migrate.alembic_config`
builds the configuration in code, so migrations work from an installed wheel.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from lunasentri_core.storage.sql.schema import VERSION_TABLE, metadata


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # The database may hold an embedding application's own tables: leave them be.
    return not (type_ == "table" and reflected and compare_to is None)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite runs DDL inside transactions too (the engine opens them
        # explicitly), so a failed migration leaves the schema as it was.
        transactional_ddl=True,
        include_object=_include_object,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError(
        "LunaSentri migrations run through `lunasentri db migrate` or SqlStorage.migrate(), "
        "which pass a connection"
    )
run_migrations(_connection)

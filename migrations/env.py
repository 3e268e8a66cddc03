"""Alembic environment for the pyfuncs core schema (run by `pyfuncs install`).

The connection comes from pyfuncs (config.attributes["connection"]): a SQLAlchemy
connection over psycopg 3, so the whole upgrade runs in one transaction.
"""

from alembic import context

from pyfuncs.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, transactional_ddl=True, **VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()

"""The first core schema: catalog, runtime loader, JWT helpers.

Revision ID: 0001_core
Revises:
"""

from pyfuncs.migrate import run_sql

revision = "0001_core"
down_revision = None


def upgrade() -> None:
    run_sql("0001_core.up.sql")


def downgrade() -> None:
    run_sql("0001_core.down.sql")

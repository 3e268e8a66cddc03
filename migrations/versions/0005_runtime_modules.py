"""The runtime as modules, loaded by name; generated bodies find it by interface version.

Revision ID: 0005_runtime_modules
Revises: 0004_security
"""

from pyfuncs.migrate import run_sql

revision = "0005_runtime_modules"
down_revision = "0004_security"


def upgrade() -> None:
    run_sql("0005_runtime_modules.up.sql")


def downgrade() -> None:
    run_sql("0005_runtime_modules.down.sql")

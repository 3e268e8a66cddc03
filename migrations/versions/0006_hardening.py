"""Hardening after a second round of attacks: lock modes no prepared statement can block,
NOTIFY without payload or failure, set_identity and enable_realtime refusing more.

Revision ID: 0006_hardening
Revises: 0005_runtime_modules
"""

from pyfuncs.migrate import run_sql

revision = "0006_hardening"
down_revision = "0005_runtime_modules"


def upgrade() -> None:
    run_sql("0006_hardening.up.sql")


def downgrade() -> None:
    run_sql("0006_hardening.down.sql")

"""A faster first call: pyfuncs.boot() reads Python's bytecode magic number from importlib's
frozen part, which every interpreter has loaded, instead of importing importlib.util, and
the runtime's sources only when their stored code was compiled by another Python.

Revision ID: 0007_first_call
Revises: 0006_hardening
"""

from pyfuncs.migrate import run_sql

revision = "0007_first_call"
down_revision = "0006_hardening"


def upgrade() -> None:
    run_sql("0007_first_call.up.sql")


def downgrade() -> None:
    run_sql("0007_first_call.down.sql")

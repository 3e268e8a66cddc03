"""An application's Alembic migrations deploy routines, and downgrades restore versions."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from pyfuncs import migrate

ENV = """
import pyfuncs.alembic_ops  # registers op.deploy_routines / op.rollback_routines
from alembic import context

context.configure(connection=context.config.attributes["connection"], transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
"""

MIGRATION = """
from alembic import op

revision = "{rev}"
down_revision = {down!r}


def upgrade() -> None:
    op.deploy_routines("{module}", label=revision)


def downgrade() -> None:
    op.rollback_routines(label=revision)
"""

ROUTINES = """
from pyfuncs import stored_function

@stored_function(schema="app")
def version() -> str:
    return "{text}"

@stored_function(schema="app")
def stable() -> int:
    return 7
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV)
    (tmp_path / "script.py.mako").write_text("")
    for rev, down, text in [("a1", None, "one"), ("a2", "a1", "two")]:
        module = tmp_path / f"routines_{rev}.py"
        module.write_text(textwrap.dedent(ROUTINES.format(text=text)))
        (tmp_path / "versions" / f"{rev}.py").write_text(
            MIGRATION.format(rev=rev, down=down, module=module)
        )
    return tmp_path


def run(project: Path, dsn: str, action: str, revision: str) -> None:
    with migrate.engine(dsn).begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(project))
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def live(conn: psycopg.Connection[Any]) -> Any:
    row = conn.execute(
        "SELECT (SELECT app.version()), (SELECT app.stable()),"
        " (SELECT live_version FROM pyfuncs.routine WHERE name = 'version')"
    ).fetchone()
    return row


def test_upgrade_deploys_and_downgrade_restores(
    project: Path, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    run(project, dsn, "upgrade", "head")
    assert live(conn) == ("two", 7, 2)
    run(project, dsn, "downgrade", "-1")
    assert live(conn) == ("one", 7, 1)
    run(project, dsn, "downgrade", "base")
    assert conn.execute("SELECT to_regproc('app.version')").fetchone() == (None,)
    run(project, dsn, "upgrade", "head")
    assert live(conn) == ("two", 7, 2)


def test_a_failing_migration_deploys_nothing(
    project: Path, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    (project / "routines_a2.py").write_text(
        "from pyfuncs import stored_function\n\n"
        "@stored_function(schema='app')\ndef version(): ...\n"
    )
    with pytest.raises(Exception, match="return type is not annotated"):
        run(project, dsn, "upgrade", "head")
    assert conn.execute("SELECT count(*) FROM pyfuncs.routine").fetchone() == (0,)


REALTIME_MIGRATION = """
from alembic import op

revision = "a3"
down_revision = "a2"


def upgrade() -> None:
    op.execute("CREATE TABLE app.notes (id int PRIMARY KEY)")
    op.enable_realtime("app.notes")


def downgrade() -> None:
    op.disable_realtime("app.notes")
    op.execute("DROP TABLE app.notes")
"""


def test_enable_realtime_in_a_migration(
    project: Path, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    (project / "versions" / "a3.py").write_text(REALTIME_MIGRATION)
    run(project, dsn, "upgrade", "head")
    enabled = "SELECT count(*) FROM pyfuncs.realtime_table WHERE table_name = 'notes'"
    assert conn.execute(enabled).fetchone() == (1,)
    run(project, dsn, "downgrade", "a2")
    assert conn.execute(enabled).fetchone() == (0,)

"""A private PostgreSQL cluster under `.pgdata/`, for the demo, tests and local work.

initdb and pg_ctl refuse to run as root, so when we are root they run as the `postgres` OS user
(`runuser`). The cluster listens on loopback and on a Unix socket inside the data directory,
on a free port chosen at first start and remembered in `.pgdata/port`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ClusterError

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
SUPERUSER = "postgres"
DATABASE = "pyfuncs"
# the logical decoding output plugins this server lets slots use (a setting of the Debian
# build here): realtime capture decodes with wal2json
OUTPUT_PLUGINS = ("pgoutput", "test_decoding", "wal2json")
# starts PL/Python's interpreter once, in the postmaster (pyfuncs/_pg/preload.c, built by
# `make setup`): listed in shared_preload_libraries where it is installed
PRELOAD = "pyfuncs_preload"


def _pg_bin() -> Path:
    env = os.environ.get("PYFUNCS_PG_BIN")
    for candidate in ([env] if env else []) + list(PG_BIN_CANDIDATES):
        if (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ClusterError(
        "PostgreSQL server binaries not found; install postgresql-15 "
        "(make setup does) or set PYFUNCS_PG_BIN to the directory holding pg_ctl"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    """An embedded cluster rooted at `root` (by default `.pgdata` in the working directory);
    with `preload`, Python starts in the postmaster where the preload library is installed."""

    root: Path
    preload: bool = True

    @classmethod
    def default(cls) -> Cluster:
        return cls(Path(os.environ.get("PYFUNCS_PGDATA", ".pgdata")).resolve())

    @property
    def home(self) -> Path:
        """Where the cluster really lives (`root` may be a symlink, see `_place`)."""
        return self.root.resolve()

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def port_file(self) -> Path:
        return self.home / "port"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def port(self) -> int:
        try:
            return int(self.port_file.read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise ClusterError(f"no embedded cluster in {self.root}; run `pyfuncs db up`") from exc

    def url(self, dbname: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args[:2])} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def _place(self) -> None:
        """Create the cluster directory where the `postgres` OS user can reach it.

        As root, initdb and postgres run as `postgres`, which cannot enter a project under a
        private directory (/root, a 0700 temp dir). Then the cluster lives under
        /var/tmp/pyfuncs/ and `root` becomes a symlink to it.
        """
        if self.root.exists() or os.geteuid() != 0:
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            probe = ["runuser", "-u", SUPERUSER, "--", "test", "-x", str(self.root.parent)]
            reachable = subprocess.run(probe, capture_output=True).returncode == 0
            if reachable:
                self.root.mkdir()
            else:
                digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
                home = Path("/var/tmp/pyfuncs") / digest
                home.mkdir(parents=True, exist_ok=True)
                self.root.symlink_to(home, target_is_directory=True)
        if os.geteuid() == 0:
            shutil.chown(self.home, SUPERUSER, SUPERUSER)

    def is_running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        return (
            self._run(
                str(_pg_bin() / "pg_ctl"), "status", "-D", str(self.data), check=False
            ).returncode
            == 0
        )

    def up(self) -> str:
        """Create (first time) and start the cluster; idempotent. Returns its URL."""
        bin_dir = _pg_bin()
        self._place()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                str(bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
        if not self.port_file.exists():
            self.port_file.write_text(str(_free_port()))
        preload = self._preload(bin_dir)
        if self.is_running() and not self._configured(preload):
            self.down()  # started before it needed wal_level=logical or the preload
        if not self.is_running():
            options = " ".join([
                f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                f"-k {self.home}", "-c unix_socket_permissions=0700",
                "-c max_connections=300", "-c shared_buffers=256MB",
                "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
                "-c max_wal_size=2GB", "-c logging_collector=off",
                # realtime capture reads the WAL through logical decoding (one slot per
                # database); the tests make many databases
                "-c wal_level=logical", "-c max_replication_slots=100",
                "-c max_wal_senders=20", "-c max_slot_wal_keep_size=4GB",
                f"-c output_plugin_libraries={','.join(OUTPUT_PLUGINS)}",
                f"-c shared_preload_libraries={','.join(preload)}",
            ])  # fmt: skip
            if os.geteuid() == 0 and self.log_file.exists():
                shutil.chown(self.log_file, SUPERUSER, SUPERUSER)
            self._run(
                str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                "-l", str(self.log_file), "-o", options,
            )  # fmt: skip
        self._ensure_database()
        return self.url()

    def _preload(self, bin_dir: Path) -> list[str]:
        """What shared_preload_libraries lists: the preload library where it is installed."""
        libdir = self._run(str(bin_dir / "pg_config"), "--pkglibdir").stdout.strip()
        installed = (Path(libdir) / f"{PRELOAD}.so").exists()
        return [PRELOAD] if self.preload and installed else []

    def _configured(self, preload: list[str]) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                level = conn.execute("SHOW wal_level").fetchone()
                plugins = conn.execute(
                    "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'"
                ).fetchone()
                preloaded = conn.execute("SHOW shared_preload_libraries").fetchone()
        except psycopg.Error:
            return True  # not reachable: leave it be, as before
        allowed = plugins is None or "wal2json" in plugins[0]
        logical = level is not None and level[0] == "logical" and allowed
        return logical and preloaded is not None and preloaded[0] == ",".join(preload)

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]
            ).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def down(self) -> None:
        """Stop the cluster (fast shutdown); a no-op when it is not running."""
        if self.is_running():
            self._run(str(_pg_bin() / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data))

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

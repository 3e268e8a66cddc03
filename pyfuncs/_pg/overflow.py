"""A C stack overflow ends this session only, not the cluster; a huge allocation fails.

CPython 3.11 checks the depth of recursion in most of its C code (repr, str, ==, <, json,
copy: deep data raises RecursionError there), but not everywhere: hashing a tuple nested a
million deep, or taking the next item of a million iterators wrapped in one another (map,
filter, zip, enumerate, itertools' islice, accumulate, starmap, ...), recurses in C until
the stack runs out. The backend then dies of SIGSEGV, and PostgreSQL, which cannot know
what a dying backend left half-done in shared memory, restarts every session of the
cluster (crash recovery).

Nothing cheap can stop such data being built, so the overflow is contained instead. The
runtime gives the main thread an alternate signal stack and a SIGSEGV handler that runs on
it. The handler tells an overflow of the main thread's stack (the faulting address just
below the stack's limit) from any other fault: for anything else it gives the signal back
to its default action, and the backend dies as it would have. For an overflow it ends the
session with a FATAL error (SQLSTATE 54001, "statement too complex") the way PostgreSQL ends
a session it terminates: the transaction is aborted, locks and shared state are released,
the client gets the message, the process exits with status 1, and PostgreSQL's postmaster
carries on, with every other session untouched. The interpreter cannot carry on after an
overflow (the C code that overflowed is half-way through), so ending the session is the
least that is safe. PostgreSQL's own depth checks (max_stack_depth) are measured from the
alternate stack while the session ends.

Memory is the other way C code takes the cluster down: one call that allocates and fills
more than the machine has (`bytes(n) + b"."`, or `bytes(n).hex()` of a lazily zeroed
`bytes`) wakes the kernel's OOM killer, which kills the backend with SIGKILL, and
PostgreSQL restarts every session. So the runtime caps the backend's address space
(RLIMIT_AS, soft limit) at what it had when the runtime started plus ADDRESS_SPACE_MB: an
allocation beyond fails at once, as a Python MemoryError (53200) in a routine and as
PostgreSQL's "out of memory" error in a query, and the session carries on. The cap stays
for the life of the backend (a pooled connection's later queries have it too), and is far
above what PostgreSQL's own work needs (work_mem, maintenance_work_mem).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal: its enums cost ms per backend
import ctypes
import os
import resource

from . import watchdog as stopping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

ALTERNATE_STACK = 4 << 20  # what the handler and PostgreSQL's FATAL path need, with room
ADDRESS_SPACE_MB = 4096  # what a backend may map beyond its size when the runtime started
MESSAGE = (
    "pyfuncs: a routine overflowed the C stack (data nested too deeply for C code that "
    "hashes or iterates it); this session ends so that no other is affected"
)

_SA_SIGINFO, _SA_ONSTACK, _SA_RESETHAND = 0x4, 0x08000000, 0x80000000  # Linux, any arch
_SI_ADDR = 16  # offsetof(siginfo_t, si_addr) on 64-bit Linux
_PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS = 0x1 | 0x2, 0x02 | 0x20  # Linux (x86-64, aarch64)
_MAP_FAILED = 2**64 - 1  # (void *) -1, as ctypes reads it


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]  # fmt: skip


class _SigAction(ctypes.Structure):  # glibc's struct sigaction (x86-64, aarch64)
    _fields_ = [("sa_sigaction", ctypes.c_void_p), ("sa_mask", ctypes.c_ulong * 16),
                ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]  # fmt: skip


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_KEPT: list[Any] = []  # the handler and its stack live as long as the process
STACK = (0, 0)  # where an overflow of the main thread's stack faults, once contained


def main_stack() -> tuple[int, int]:
    """The range of addresses where an overflow of the main thread's stack faults: from
    below the lowest address its stack may grow to, up to where it started (above it are
    only the program's arguments and environment). Read from /proc/self/stat, not from the
    [stack] line of /proc/self/maps, which a backend's many mappings make 0.5 ms to read."""
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()  # (the command may hold spaces)
    top = int(fields[25])  # startstack, field 28 of proc(5), the 26th after the command
    limit = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if limit == resource.RLIM_INFINITY or limit <= 0:
        limit = 1 << 30
    return top - limit - (16 << 20), top


def contain(fatal: Callable[..., Any], lib: ctypes.CDLL) -> bool:
    """Install the handler for this backend (its main thread); `fatal` is plpy.fatal, `lib`
    the postgres executable. False where it could not be."""
    global STACK
    if _KEPT or not hasattr(lib, "set_stack_base"):
        return bool(_KEPT)
    libc = ctypes.CDLL(None, use_errno=True)
    low, high = main_stack()
    set_stack_base = lib.set_stack_base
    set_stack_base.restype = ctypes.c_void_p

    def on_fault(signum: int, info: int, context: int) -> None:
        address = ctypes.c_void_p.from_address(info + _SI_ADDR).value or 0
        if not low <= address < high:
            return  # not an overflow: the default action (SA_RESETHAND) ends the backend
        set_stack_base()  # PostgreSQL's depth checks, from here on this stack
        fatal(MESSAGE, sqlstate="54001")

    # a stop due when the fault comes (a timeout during the long C call that overflowed)
    # must not land in the handler: it would be lost there, and the fault kill the cluster
    stopping.bookkeeping(on_fault)
    # (libc's mmap, not the module's: its import costs every backend 0.2 ms)
    allocate = libc.mmap
    allocate.restype = ctypes.c_void_p
    allocate.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]  # fmt: skip
    where = allocate(None, ALTERNATE_STACK, _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS, -1, 0)
    if where in (None, _MAP_FAILED):
        return False
    alternate = _StackT(where, 0, ALTERNATE_STACK)
    if libc.sigaltstack(ctypes.byref(alternate), None) != 0:
        return False
    handler = _HANDLER(on_fault)
    action = _SigAction()
    action.sa_sigaction = ctypes.cast(handler, ctypes.c_void_p).value
    action.sa_flags = _SA_SIGINFO | _SA_ONSTACK | _SA_RESETHAND
    if libc.sigaction(_signal.SIGSEGV, ctypes.byref(action), None) != 0:
        return False
    _KEPT.extend((alternate, handler, action))
    STACK = low, high
    return True


def address_space() -> int:
    """This backend's address space now, in bytes (what RLIMIT_AS caps), read from
    /proc/self/statm, kept open."""
    if not _statm:
        _statm.append(os.open("/proc/self/statm", os.O_RDONLY))
    return int(os.pread(_statm[0], 64, 0).split()[0]) * _PAGE


_statm: list[int] = []
_PAGE = os.sysconf("SC_PAGE_SIZE")


def room_left() -> float:
    """How much of the address space the cap leaves, in bytes (infinite without a cap)."""
    cap = resource.getrlimit(resource.RLIMIT_AS)[0]
    return float("inf") if cap == resource.RLIM_INFINITY else cap - address_space()


# What PL/Python may need of the address space to convert a result after the call:
# CONVERSION_ROOM, and CONVERSION_FACTOR times what results.plain counted of it. Of a text
# item, PostgreSQL keeps a copy of its bytes and its datum, each rounded up to a power of
# two below 8 kB, and the array's copy, while Python makes its UTF-8 bytes: up to five
# times its length (a red team's 10,000 texts of 4,093 characters, counted 4,221 each,
# took 12.3 kB each, and the str() of a Decimal after them failed with twice the count
# left); of a Decimal, its str(), that text's bytes, their copy and the numeric.
CONVERSION_ROOM = 16 << 20
CONVERSION_FACTOR = 6


def room_for(made: int) -> None:
    """Refuse, with a MemoryError inside the call, a result that PL/Python would convert
    after it with too little of the address space left: where str() of a value fails there,
    PL/Python goes on with the NULL and the backend crashes (a red team's routine kept the
    space filled past its call, in a generator and in a reference cycle, and returned a
    Decimal). `made`: what results.plain counted of it. The garbage collector runs first
    where the room is short."""
    cap = resource.getrlimit(resource.RLIMIT_AS)[0]
    if cap == resource.RLIM_INFINITY:
        return
    need = CONVERSION_ROOM + CONVERSION_FACTOR * made
    if cap - address_space() >= need:
        return
    import gc  # (imported already, by the interpreter)

    gc.collect()
    if cap - address_space() < need:
        raise MemoryError(
            "pyfuncs: too little memory is left for PostgreSQL to convert the routine's "
            "result after the call: free what the routine keeps, or return less"
        )


def cap_address_space() -> int:
    """Cap this backend's address space (see above); the cap in bytes, or 0 where there is a
    lower one already or it could not be set."""
    cap = address_space() + (ADDRESS_SPACE_MB << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return 0
    if hard != resource.RLIM_INFINITY and hard < cap:
        return 0
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        return 0
    return cap

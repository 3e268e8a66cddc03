"""`pyfuncs check` and `deploy` never run a routine module unguarded here: it runs in a
contained child process, and nothing it makes reaches DDL but names that passed a pattern,
types from the vocabulary and values rebuilt with their exact types (README "Security
model"). Each hostile module below passes the policy check, so it really runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import DefinitionError, DeployError, ddl
from pyfuncs import collect as collecting
from pyfuncs import deploy as deploying
from pyfuncs.cli import main
from pyfuncs.definition import MAX_PROBLEMS
from pyfuncs.policy import check_source

ROUTINE = "\n\n@stored_function\ndef ok() -> int:\n    return 1\n"

# ways out of the guards that pass the policy check (module views close them now; a class
# pattern on __globals__, the other route there was, the policy and the compiler refuse), and
# what each does once out: every one tries to leave MARKER behind
ESCAPES = {
    "a module attribute": "import uuid\nOS = uuid.os\n",
    "sys.modules": "import uuid\nOS = uuid.sys.modules['os']\n",
}
ACTIONS = {
    "open": "OS.close(OS.open(MARKER, OS.O_CREAT | OS.O_WRONLY))",
    "mkdir": "OS.mkdir(MARKER)",
    "system": "OS.system('touch ' + MARKER)",
    "fork": "OS._exit(0) if OS.fork() == 0 else OS.wait()",
    "rename": "OS.rename(__file__, MARKER)",
    "ctypes": "OS.sys.modules['ctypes'].CDLL(None).system(b'touch ' + MARKER.encode())",
    "thread": "OS.sys.modules['threading'].Thread(target=OS.mkdir, args=(MARKER,)).start()",
}


def hostile(tmp_path: Path, escape: str, action: str) -> Path:
    marker = tmp_path / "marker"
    module = tmp_path / "hostile.py"
    module.write_text(
        "from pyfuncs import stored_function\n"
        + f"MARKER = {str(marker)!r}\n"
        + ESCAPES[escape]
        + "try:\n    "
        + ACTIONS[action].replace("__file__", repr(str(module)))
        + "\nexcept OSError:\n    pass\n"
        + ROUTINE
    )
    assert check_source(module.read_text(), "hostile.py") == []  # it really runs
    return marker


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_a_hostile_module_leaves_no_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], escape: str, action: str
) -> None:
    marker = hostile(tmp_path, escape, action)
    main(["check", str(tmp_path / "hostile.py")])
    out, err = capsys.readouterr()
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.py"]  # not even a cache
    assert "ok  public.ok" in out or "pyfuncs:" in err


def test_the_module_sees_neither_the_deployers_environment_nor_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOY_SECRET", "s3cr3t-in-the-environment")
    secret_file = tmp_path / "key"
    secret_file.write_text("s3cr3t-in-a-file")
    module = tmp_path / "nosy.py"
    module.write_text(
        "from pyfuncs import stored_function\nimport uuid\n"
        f"try:\n    found = uuid.os.read(uuid.os.open({str(secret_file)!r}, 0), 100)\n"
        "except OSError as exc:\n    found = str(exc)\n"
        "raise ValueError(str(dict(uuid.os.environ)) + str(found))\n" + ROUTINE
    )
    with pytest.raises(DefinitionError) as info:
        collecting.collect(str(module))
    message = str(info.value)
    assert "importing" in message and "s3cr3t" not in message


CONTAINED = """
import os, socket, sys, threading
from pyfuncs._sandbox import contain
contain(5, 1 << 30)
marker = sys.argv[1]


def system():
    if os.system("touch " + marker) != 0:  # it cannot start a shell: a status, not an error
        raise OSError("refused")


attempts = {
    "open": lambda: open(marker, "w"),
    "mkdir": lambda: os.mkdir(marker),
    "system": system,
    "fork": lambda: os.fork(),
    "socket": lambda: socket.socket(),
    "thread": lambda: threading.Thread(target=os.mkdir, args=(marker,)).start(),
    "kill": lambda: os.kill(os.getppid(), 9),
    "unlink": lambda: os.unlink(sys.argv[2]),
    "read": lambda: os.open(sys.argv[2], os.O_RDONLY),
}
refused = []
for name, attempt in attempts.items():
    try:
        attempt()
    except (OSError, RuntimeError):
        refused.append(name)
os.write(1, " ".join(refused).encode())
"""


def test_the_check_process_can_only_compute(tmp_path: Path) -> None:
    """What contains a module under check, on its own: whatever Python code does once it is
    in place (the way out of the guards it took does not matter), the system refuses it."""
    marker, precious = tmp_path / "marker", tmp_path / "precious"
    precious.write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-c", CONTAINED, str(marker), str(precious)],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert sorted(done.stdout.decode().split()) == sorted(
        ["open", "mkdir", "system", "fork", "socket", "thread", "kill", "unlink", "read"])  # fmt: skip
    assert not marker.exists() and precious.read_text() == "keep me"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("while True:\n    pass\n", "CPU"),
        ('x = bytes(2 ** 31) + b"."\n', "memory"),
        ("print('{\"routines\": []}')\n", None),  # printing cannot forge the answer
    ],
)
def test_limits_of_a_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, says: str | None
) -> None:
    monkeypatch.setattr(collecting, "CPU_SECONDS", 2)
    module = tmp_path / "heavy.py"
    module.write_text("from pyfuncs import stored_function\n" + body + ROUTINE)
    if says is None:
        assert [d.qualname for d in collecting.collect(str(module))] == ["public.ok"]
        return
    with pytest.raises(DefinitionError, match=says):
        collecting.collect(str(module))


def test_the_parent_builds_the_body_whatever_the_module_patches(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A module once rewrote the generator of PL/Python bodies through pyfuncs' internals;
    what runs in the database is now made in a process the module never ran in."""
    module = tmp_path / "patcher.py"
    module.write_text(
        "from pyfuncs import stored_function\nimport uuid\n"
        "try:\n    modules = uuid.sys.modules\nexcept AttributeError:\n    modules = {}\n"
        "for name, m in list(modules.items()):\n"
        "    if name.startswith('pyfuncs') and hasattr(m, 'BODY'):\n"
        "        m.BODY = 'return 666'\n"
        "    if name.startswith('pyfuncs') and hasattr(m, 'body'):\n"
        "        m.body = lambda d: 'return 666'\n" + ROUTINE
    )
    (definition,) = collecting.collect(str(module))
    deploying.deploy(conn, str(module))
    row = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'ok'").fetchone()
    assert row == (ddl.body(definition),) and row[0].startswith("# pyfuncs public.ok")
    assert conn.execute("SELECT public.ok()").fetchone() == (1,)


@pytest.mark.parametrize(
    "imports",
    ["from pyfuncs import deploy", "from pyfuncs import _pg", "import pyfuncs.ddl",
     "from pyfuncs import definition as d", "import pyfuncs\nx = pyfuncs.collect",
     "import pyfuncs as p\nx = p.errors"],
)  # fmt: skip
def test_routine_modules_import_only_the_api_for_routines(tmp_path: Path, imports: str) -> None:
    module = tmp_path / "internal.py"
    module.write_text("from pyfuncs import stored_function\n" + imports + ROUTINE)
    with pytest.raises(DefinitionError, match=r"not part of pyfuncs' API for routines|import"):
        collecting.collect(str(module))


# --- DDL is made of exact types only ------------------------------------------------------

# A module cannot spell __str__ or __repr__ (the policy refuses dunder names), but it can
# make a class with them: type() takes them as dictionary keys.
INJECTIONS = {
    "a Decimal whose str() is SQL": (
        "from decimal import Decimal\n"
        "D = type('D', (Decimal,), {'__str__': lambda s: SQL, '__repr__': lambda s: SQL})\n"
        "@stored_function(schema='inj')\ndef f(x: Decimal = D('1')) -> int:\n    return 1\n",
        "cannot be written into SQL",
    ),
    "an int whose str() is SQL": (
        "I = type('I', (int,), {'__str__': lambda s: SQL, '__repr__': lambda s: SQL})\n"
        "@stored_function(schema='inj')\ndef f(x: int = I(1)) -> int:\n    return 1\n",
        "cannot be written into SQL",
    ),
    "a float whose repr() is SQL": (
        "F = type('F', (float,), {'__str__': lambda s: SQL, '__repr__': lambda s: SQL})\n"
        "@stored_function(schema='inj')\ndef f(x: float = F(1)) -> int:\n    return 1\n",
        "cannot be written into SQL",
    ),
    "a str equal to every type name": (
        "from typing import Annotated\n"
        "S = type('S', (str,), {'__eq__': lambda a, b: True, '__hash__': lambda a: 0})\n"
        "EVIL = S('integer) RETURNS int AS $$ x $$ LANGUAGE sql; ' + SQL)\n"
        "@stored_function(schema='inj')\ndef f(x: Annotated[int, EVIL]) -> int:\n"
        "    return 1\n",
        "choose one of",
    ),
    "a dict default with a str-subclass key": (
        "from typing import Any\nK = type('K', (str,), {})\n"
        "@stored_function(schema='inj')\n"
        "def f(x: dict[str, Any] = {K('a'): 1}) -> int:\n    return 1\n",
        "cannot be written into SQL",
    ),
    "a role that is SQL": (
        "@stored_function(schema='inj', roles=['student; ' + SQL])\ndef f() -> int:\n"
        "    return 1\n",
        "is not a valid name",
    ),
    "a routine name that is SQL": (
        "@stored_function(schema='inj', name='f(); ' + SQL)\ndef f() -> int:\n    return 1\n",
        "is not a valid name",
    ),
    "a limit that is an int subclass": (
        "I = type('I', (int,), {'__repr__': lambda s: SQL})\n"
        "@stored_function(schema='inj', timeout_ms=I(5))\ndef f() -> int:\n    return 1\n",
        "timeout_ms",
    ),
    "an annotation that calls": (
        "import uuid\n@stored_function(schema='inj')\n"
        "def f(x: \"uuid.os.system('touch x')\") -> int:\n    return 1\n",
        "not a plain type expression",
    ),
}
SQL = "0; DROP TABLE public.victim; --"


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_values_a_module_makes_never_become_sql(
    conn: psycopg.Connection[Any], tmp_path: Path, case: str
) -> None:
    conn.execute("CREATE TABLE public.victim (id int)")
    body, says = INJECTIONS[case]
    module = tmp_path / "injector.py"
    module.write_text(f"from pyfuncs import stored_function\nSQL = {SQL!r}\n" + body)
    with pytest.raises(DefinitionError, match=says):
        deploying.deploy(conn, str(module))
    assert conn.execute("SELECT to_regclass('public.victim')").fetchone() != (None,)
    assert conn.execute("SELECT to_regnamespace('inj')").fetchone() == (None,)


def test_text_a_module_may_choose_is_quoted(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    """Docstrings, string defaults and file names end up in DDL, as literals only."""
    conn.execute("CREATE TABLE public.victim (id int)")
    folder = tmp_path / "odd\nimport os\nos.system('x')\n"
    folder.mkdir()
    odd = folder / "odd.py"
    odd.write_text(
        "from pyfuncs import stored_function\n\n@stored_function(schema='quoted')\n"
        f'def f(x: str = {SQL!r} + "\'$$") -> str:\n'
        f'    """{SQL} $$ \'"""\n    return x\n'
    )
    deploying.deploy(conn, str(odd))
    assert conn.execute("SELECT quoted.f()").fetchone() == (SQL + "'$$",)
    comment = conn.execute("SELECT obj_description('quoted.f'::regproc)").fetchone()
    assert comment == (f"{SQL} $$ '",)
    prosrc = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'f'").fetchone()[0]
    assert "\nimport os" not in prosrc.split("try:", 1)[0]  # the path stays in its comment
    assert conn.execute("SELECT to_regclass('public.victim')").fetchone() != (None,)


def test_a_deploy_stays_whole_when_a_statement_misbehaves(
    conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were generated DDL ever to carry a second statement (a COMMIT, say), the deploy
    refuses it as a whole instead of committing part of it."""
    module = tmp_path / "two.py"
    module.write_text("from pyfuncs import stored_function\n\n@stored_function(schema='two')\n"
                      "def f() -> int:\n    return 1\n")  # fmt: skip
    real = ddl.create_statement
    monkeypatch.setattr(
        ddl, "create_statement",
        lambda d: ddl.sql.SQL("{}; COMMIT; CREATE TABLE public.leaked ()").format(real(d)),
    )  # fmt: skip
    with pytest.raises(DeployError, match="nothing was changed"):
        deploying.deploy(conn, str(module))
    assert conn.execute("SELECT to_regnamespace('two'), to_regclass('public.leaked')").fetchone() == (
        None, None)  # fmt: skip
    assert conn.execute("SELECT count(*) FROM pyfuncs.routine").fetchone() == (0,)
    monkeypatch.setattr(ddl, "create_statement", lambda d: ddl.sql.SQL("COMMIT"))
    with pytest.raises(DeployError, match="not a statement a deploy makes"):
        deploying.deploy(conn, str(module))
    assert conn.execute("SELECT count(*) FROM pyfuncs.routine").fetchone() == (0,)


def test_dotted_names_are_looked_up_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing a package runs its __init__: a module named by its dotted name is found on
    the path and read, its packages never executed."""
    package = tmp_path / "pkg"
    package.mkdir()
    marker = tmp_path / "marker"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "routines.py").write_text("from pyfuncs import stored_function" + ROUTINE)
    monkeypatch.chdir(tmp_path)
    assert [d.qualname for d in collecting.collect("pkg.routines")] == ["public.ok"]
    assert not marker.exists()
    assert os.listdir(package) == sorted(os.listdir(package))  # nothing new beside it either


# --- a module cannot make the deployer's side work without bound ---------------------------


def many(count: int, *, decorator: str = "@stored_function", call_next: bool = False) -> str:
    """A module of `count` trivial routines (each calling the next one, if asked)."""
    head = "from pyfuncs import stored_function, procedure\n"
    return head + "".join(
        f"{decorator}\ndef f{i}() -> int:\n    return "
        + (f"f{i + 1}() + {i}\n" if call_next and i + 1 < count else f"{i}\n")
        for i in range(count)
    )


@pytest.mark.parametrize("call_next", [False, True], ids=["independent", "a chain"])
def test_a_module_with_the_most_routines_is_checked_in_seconds(
    tmp_path: Path, call_next: bool
) -> None:
    """800 routines took 144 s (each routine's source re-parsed the module per routine, and
    3,000 ran for more than 20 minutes); a chain, where each routine keeps every later one,
    is the worst case for the sources each routine keeps."""
    module = tmp_path / "many.py"
    module.write_text(many(collecting.MAX_ROUTINES, call_next=call_next))
    started = time.monotonic()
    definitions = collecting.collect(str(module))
    assert time.monotonic() - started < 15
    assert len(definitions) == collecting.MAX_ROUTINES
    first, last = definitions[0], definitions[-1]
    assert "def f1()" not in last.source and ("def f1()" in first.source) == call_next
    assert first.source.count("\n") == module.read_text().count("\n")


@pytest.mark.parametrize(
    "source",
    [
        many(collecting.MAX_ROUTINES + 1),
        many(3000),
        many(1001, decorator="@procedure"),
        many(1001, decorator="@stored_function(schema='api')"),
        many(1001).replace("def f7()", "async def f7()"),
    ],
    ids=["one too many", "3000", "procedures", "with options", "an async one"],
)
def test_more_routines_than_a_module_may_have_are_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    module = tmp_path / "many.py"
    module.write_text(source)
    started = time.monotonic()
    assert main(["check", str(module)]) == 1
    assert time.monotonic() - started < 5
    _, err = capsys.readouterr()
    assert "at most 1000 routines: split it" in err and err.count("\n") == 1


def test_a_module_may_be_1_mb_and_no_more(tmp_path: Path) -> None:
    module = tmp_path / "big.py"
    body = "from pyfuncs import stored_function" + ROUTINE
    padding = collecting.MAX_SOURCE_BYTES - len(body.encode()) - 2
    module.write_text("#" + "x" * padding + "\n" + body)
    assert module.stat().st_size == collecting.MAX_SOURCE_BYTES
    assert [d.qualname for d in collecting.collect(str(module))] == ["public.ok"]
    module.write_text("#" + "x" * (padding + 1) + "\n" + body)
    with pytest.raises(DefinitionError, match="larger than 1 MB, the most a routine module"):
        collecting.collect(str(module))
    module.write_text("#" + "é" * (padding // 2 + 1) + "\n" + body)  # bytes count, not chars
    with pytest.raises(DefinitionError, match="larger than 1 MB"):
        collecting.collect(str(module))


def test_the_source_all_routines_keep_together_is_bounded(tmp_path: Path) -> None:
    """Each routine keeps the module code it uses: 600 KB of constants shared by 200
    routines would be 120 MB of source in the catalog (and as much DDL)."""
    module = tmp_path / "shared.py"
    constant = "TABLE = " + repr("x" * 600_000) + "\n"
    module.write_text(constant + many(200))
    with pytest.raises(DefinitionError, match=r"200 routines would keep 114 MB of source"):
        collecting.collect(str(module))
    module.write_text(constant + many(50))  # 30 MB: kept
    assert len(collecting.collect(str(module))) == 50


# --- a module is read only through real files ------------------------------------------------

SECRET = "ghp_S3cr3tT0kenValue1234567890"


@pytest.fixture
def deployers_secret(tmp_path: Path) -> Path:
    home = tmp_path / "ci_home"
    home.mkdir()
    (home / ".env").write_text(f"API_TOKEN={SECRET}\n")
    (home / "routines.py").write_text(f"API_TOKEN = {SECRET}\n")  # a module-looking file
    return home


def checkout(tmp_path: Path, home: Path, link: str) -> str:
    """A checkout whose `app` holds a link of the kind a pull request could add; returns the
    name to check it by."""
    repo = tmp_path / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "__init__.py").write_text("")
    if link == "file":
        (repo / "app" / "routines.py").symlink_to(home / ".env")
        return "app/routines.py"
    if link == "absolute path":
        (repo / "app" / "routines.py").symlink_to(home / ".env")
        return str(repo / "app" / "routines.py")
    if link == "dotted name":
        (repo / "app" / "routines.py").symlink_to(home / ".env")
        return "app.routines"
    if link == "directory":
        (repo / "app" / "lib").symlink_to(home, target_is_directory=True)
        return "app/lib/routines.py"
    if link == "directory, dotted":
        (repo / "app" / "lib").symlink_to(home, target_is_directory=True)
        (home / "__init__.py").write_text("")
        return "app.lib.routines"
    if link == "through ..":
        (repo / "app" / "lib").symlink_to(home / "sub", target_is_directory=True)
        (home / "sub").mkdir()
        return "app/lib/../routines.py"
    if link == "dangling":
        (repo / "app" / "routines.py").symlink_to(tmp_path / "nowhere")
        return "app/routines.py"
    if link == "relative":
        (repo / "app" / "routines.py").symlink_to(os.path.relpath(home / ".env", repo / "app"))
        return "app/routines.py"
    raise AssertionError(link)


LINKS = ["file", "absolute path", "dotted name", "directory", "directory, dotted", "through ..",
         "dangling", "relative"]  # fmt: skip


@pytest.mark.parametrize("link", LINKS)
def test_a_symlinked_module_does_not_leak_the_deployers_files(
    tmp_path: Path,
    deployers_secret: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    link: str,
) -> None:
    target = checkout(tmp_path, deployers_secret, link)
    monkeypatch.chdir(tmp_path / "repo")
    assert main(["check", target]) == 1
    out, err = capsys.readouterr()
    assert "is a symbolic link" in err and err.count("\n") == 1, err
    assert SECRET not in out + err and "ci_home" not in out + err


def test_links_above_the_working_directory_are_the_deployers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the checkout itself is (a symlinked home, say) is the deployer's choice."""
    real = tmp_path / "real"
    (real / "app").mkdir(parents=True)
    (real / "app" / "routines.py").write_text("from pyfuncs import stored_function" + ROUTINE)
    (tmp_path / "home").symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(tmp_path / "home")
    for target in ("app/routines.py", str(real / "app" / "routines.py")):
        assert [d.qualname for d in collecting.collect(target)] == ["public.ok"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_only_regular_files_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.py")  # opening it to read would wait for a writer
        target = "pipe.py"
    elif kind == "directory":
        (tmp_path / "dir.py").mkdir()
        target = "dir.py"
    else:
        target = os.path.relpath("/dev/zero", tmp_path)
    with pytest.raises(DefinitionError, match="is not a regular file"):
        collecting.collect(target)


# --- what the child says is data: bounded, and printed on lines of its own ------------------


@pytest.fixture
def forged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bytes], None]]:
    """Make the child answer these bytes, as a module that escaped every guard could."""

    def answer(data: bytes) -> None:
        child = tmp_path / f"child_{len(list(tmp_path.iterdir()))}.py"
        (tmp_path / "answer.bin").write_bytes(data)
        child.write_text(
            "import sys, os\nsys.stdin.read()\n"
            f"data = open({str(tmp_path / 'answer.bin')!r}, 'rb').read()\n"
            "while data:\n    data = data[os.write(1, data):]\n"
        )
        monkeypatch.setattr(collecting, "_sandbox", types.SimpleNamespace(__file__=str(child)))
        collecting._run_child.cache_clear()

    yield answer
    collecting._run_child.cache_clear()


def long_path(tmp_path: Path) -> Path:
    """A module at a path of ~3,800 characters (each error line used to repeat it)."""
    folder = tmp_path.joinpath(*["d" * 200] * 19)
    folder.mkdir(parents=True)
    module = folder / "amp.py"
    module.write_text("from pyfuncs import stored_function" + ROUTINE)
    return module


def check_output(capsys: pytest.CaptureFixture[str], module: Path) -> tuple[int, str, str]:
    code = main(["check", str(module)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("count", [1000, 200_000])
def test_a_forged_answer_cannot_flood_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forged: Any, count: int
) -> None:
    """4.5 MB of `{"function": "xN"}` once printed 400 MB: one long line per fact."""
    facts = b",".join(b'{"function":"x%d"}' % i for i in range(count))
    forged(b'{"routines":[' + facts + b"]}")
    code, out, err = check_output(capsys, long_path(tmp_path))
    assert code == 1 and out == ""
    assert len(err) < 128_000, len(err)
    assert "more routines with problems" in err or "unreadable answer" in err


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b'{"routines": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "unreadable answer"),
        (b'{"routines": [], "pad": "' + b"x" * (9 << 20) + b'"}', "more than 8 MB to describe"),
        (b'{"routines": [' + b"[" * 400 + b"]" * 400 + b"]}", "unreadable facts"),
        (b'{"routines": "no"}', "unreadable answer"),
        (b"", "without an answer"),
    ],
    ids=["deep", "huge", "nested facts", "not a list", "nothing"],
)
def test_an_unreadable_answer_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forged: Any, answer: bytes, says: str
) -> None:
    forged(answer)
    module = tmp_path / "mod.py"
    module.write_text("from pyfuncs import stored_function" + ROUTINE)
    code, _, err = check_output(capsys, module)
    assert code == 1 and says in err and err.count("\n") == 1, err
    assert "unexpected error" not in err


def deep_hint(levels: int) -> dict[str, Any]:
    hint: dict[str, Any] = {"kind": "scalar", "type": "int"}
    for _ in range(levels):
        hint = {"kind": "list", "of": hint}
    return hint


FORGE = "\n::error::forged\x1b[2K\rok  public.fake()  fake.py:1\u2028\u202e"
FORGED_FACTS = {
    "the error message": {"error": {"message": "boom" + FORGE, "line": 3}},
    "an option's name": {"routines": [{"function": "ok", "kind": "function",
                                       "options": {"x" + FORGE: {"t": "int", "v": 1}}}]},
    "a routine name": {"routines": [{"function": "ok", "kind": "function",
                                     "options": {"name": {"t": "str", "v": "n" + FORGE}}}]},
    "a schema": {"routines": [{"function": "ok", "kind": "function",
                               "options": {"schema": {"t": "str", "v": "s" + FORGE}}}]},
    "an unsupported value": {"routines": [{"function": "ok", "kind": "function",
                                           "options": {"roles": {"t": "unsupported",
                                                                 "v": FORGE}}}]},
    "a hint's text": {"routines": [{"function": "ok", "kind": "function", "options": {},
                                    "params": [], "returns": {"kind": "unreadable",
                                                              "text": FORGE}}]},
    "a row's name": {"routines": [{"function": "ok", "kind": "function", "options": {},
                                   "params": [], "returns": {"kind": "row", "name": FORGE,
                                                             "fields": [["a", {"kind": "x"}]]}}]},
    "a column name": {"routines": [{"function": "ok", "kind": "function", "options": {},
                                    "params": [], "returns": {"kind": "row", "name": "r",
                                                              "fields": [[FORGE, deep_hint(1)]]}}]},
    "a deep hint": {"routines": [{"function": "ok", "kind": "function", "options": {},
                                  "params": [], "returns": deep_hint(300)}]},
    "many problems": {"routines": [{"function": "ok", "kind": "function",
                                    "options": {f"o{i}" + FORGE: 1 for i in range(5000)}}]},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FORGED_FACTS))
def test_what_the_child_says_cannot_forge_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forged: Any, case: str
) -> None:
    """Every line of a report is pyfuncs' own: the child's text is escaped wherever it is
    shown (a fake `ok` line, or a CI workflow command such as `::error::`, used to get
    through), and a routine's problems are listed up to a number."""
    forged(json.dumps(FORGED_FACTS[case]).encode())
    module = tmp_path / "mod.py"
    module.write_text("from pyfuncs import stored_function" + ROUTINE)
    code, out, err = check_output(capsys, module)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"pyfuncs: {module}:"), err
    assert all(line.startswith(("  - ", "pyfuncs: ")) for line in lines[1:]), err
    assert not any(c in err for c in "\x1b\r\u2028\u202e") and "unexpected" not in err
    assert len(lines) <= MAX_PROBLEMS + 2 and len(err) < 20_000


def test_policy_violations_are_listed_up_to_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5,000 violations at a long path were 20 MB of output; now the first twenty."""
    module = long_path(tmp_path)
    module.write_text("from pyfuncs import stored_function\n" + "__x__\n" * 5000 + ROUTINE)
    code, _, err = check_output(capsys, module)
    assert code == 1 and "5000 policy violation(s)" in err
    assert "... and 4980 more violations" in err and len(err) < 100_000


# --- names are whole names -----------------------------------------------------------------

NOT_NAMES = ["total\n", "total\r", "total\t", "to\x00tal", "total ", "\ntotal", "total\u2028",
             "ｔotal", "totál", "Total", "t" * 64, ""]  # fmt: skip  # noqa: RUF001


@pytest.mark.parametrize("name", NOT_NAMES, ids=repr)
@pytest.mark.parametrize("where", ["schema", "name", "role", "result column", "row field"])
def test_names_are_whole_names(tmp_path: Path, name: str, where: str) -> None:
    """`$` matched before a final newline: a result column named "total\\n" deployed, and a
    schema "nl2\\n" printed "ok  nl2" and ".f()" on two lines."""
    options = {"schema": f"schema={name!r}", "name": f"name={name!r}",
               "role": f"roles=[{name!r}]"}.get(where, "")  # fmt: skip
    returns = "int"
    if where == "result column":
        returns = "Row"
    elif where == "row field":
        returns = "Iterator[Row]"
    module = tmp_path / "names.py"
    module.write_text(
        "from typing import Iterator, TypedDict\nfrom pyfuncs import stored_function\n"
        f"Row = TypedDict('Row', {{{name!r}: int, 'id': int}})\n"
        f"@stored_function({options})\ndef f() -> {returns}:\n    return 1\n"
    )
    with pytest.raises(DefinitionError, match="is not a valid name") as info:
        collecting.collect(str(module))
    lines = str(info.value).splitlines()
    assert all(line.startswith((f"{module}:", "  - ")) for line in lines), lines


@pytest.mark.parametrize(
    "schema", ["pyfuncs", "pg_catalog", "information_schema", "pg_toast", "pg_temp",
               "pg_temp_3", "pg_toast_temp_1", "pg_mine"],
)  # fmt: skip
def test_reserved_schemas_are_refused_by_the_check(tmp_path: Path, schema: str) -> None:
    module = tmp_path / "hijack.py"
    module.write_text(
        "from pyfuncs import stored_function, db\n\n"
        f"@stored_function(schema={schema!r}, roles=['writer'])\n"
        "def set_identity(role: str, claims: str) -> None:\n    return None\n"
    )
    with pytest.raises(DefinitionError, match=f"schema '{schema}' is reserved"):
        collecting.collect(str(module))


# --- the filter holds every thread ---------------------------------------------------------

THREADED = """
import os, sys, threading
from pyfuncs._sandbox import contain
go, done, result = threading.Event(), threading.Event(), []


def worker():  # started before the filter, as an allowed module could at import
    go.wait()
    try:
        os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY))
        result.append("opened")
    except OSError as exc:
        result.append(exc.errno)
    done.set()


threading.Thread(target=worker).start()
contain(5, 1 << 30)
go.set()
done.wait()
os.write(1, repr(result).encode())
"""


def test_the_filter_holds_threads_started_before_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    done = subprocess.run([sys.executable, "-c", THREADED, str(marker)], capture_output=True,
                          timeout=30, check=True)  # fmt: skip
    assert done.stdout == b"[1]" and not marker.exists()  # EPERM


@pytest.mark.parametrize("name", ["json", "decimal.tools", "pyfuncs.mine", "pyfuncs_pg", "plpy"])
def test_a_module_named_as_one_the_runtime_imports_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The database loads a routine module under its name: one named after a module of the
    standard library or of pyfuncs would shadow the module the runtime itself imports."""
    parts = name.split(".")
    package = tmp_path.joinpath(*parts[:-1])
    package.mkdir(parents=True, exist_ok=True)
    for level in range(1, len(parts)):
        tmp_path.joinpath(*parts[:level], "__init__.py").write_text("")
    package.joinpath(parts[-1] + ".py").write_text(ROUTINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    with pytest.raises(DefinitionError, match=r"may not be called .*rename it"):
        collecting.read(name)


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("class M(type):\n    pass\n", "the class 'M' may not derive from type"),
        (
            "import datetime\n\nclass D(datetime.datetime):\n    pass\n",
            "the class 'D' may not derive from datetime",
        ),
        (
            "import dataclasses\nimport json\n\ndataclasses.dataclass(json.JSONEncoder)\n",
            "dataclass() takes a class of the routine's own",
        ),
    ],
    ids=["metaclass", "datetime_subclass", "shared_class"],
)
def test_check_refuses_what_the_database_would(tmp_path: Path, source: str, said: str) -> None:
    """A module that defines a metaclass, derives from datetime or changes a shared class
    at its top level fails `pyfuncs check` as it would fail its first call, with the
    runtime's words (the check runs it with the same flags on the types)."""
    module = tmp_path / "classy.py"
    module.write_text("from pyfuncs import stored_function\n" + source + ROUTINE)
    assert check_source(module.read_text(), "classy.py") == []
    with pytest.raises(DefinitionError) as info:
        collecting.collect(str(module))
    assert "classy failed: TypeError: " in str(info.value)
    assert said in str(info.value)

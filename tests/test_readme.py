"""README.rst as a new user follows it: every code block, collected from the file itself, runs.

Python blocks run in order in one namespace, as a reader builds on the previous
snippet, with the set-up their own text names: a ``broker`` ("on any broker"), the
``message`` at hand, ``retry.json``, and your HTTP ``session`` and ``url``. The
placeholder services they name (``postgresql://app@db/app``,
``redis://localhost:6379/0``) are the test's real PostgreSQL and Redis. A block that
is a module (its first line ``# app.py -- run with: ...``) is written to a file,
imported, and its actors run by a worker. A block that is a test module (its first line
``# test_x.py -- run with: pytest ...``) is run by that pytest command, in a process of
its own, and must pass. Shell blocks are followed in a shell with a
new user's ``PATH``: each command they run must be found there, after the quick
start's own steps.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from loguru import logger

from dramatiq_shared import get_stack, set_broadcaster
from dramatiq_shared.db import create_tables, init_database
from dramatiq_shared.keys import Keys
from dramatiq_shared.stores import DeadLetterStore

from .conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"
#: The services README snippets name, and what the tests give them instead.
PLACEHOLDERS = {"postgresql://app@db/app": "postgres_url", "redis://localhost:6379/0": "redis"}
#: ``# SomeError: text`` after a statement: README's way to show what it raises.
RAISES = re.compile(r"#\s*(\w+(?:Error|Exception)):\s*(.+)$")


@dataclass(frozen=True)
class Block:
    """A code block of README.rst: ``python`` or ``shell``, its first line's number, its text."""

    kind: str
    line: int
    text: str


def readme_blocks(path: Path = README) -> list[Block]:
    """Every ``.. code-block:: python`` and every ``::`` literal (shell) block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    number = 0
    while number < len(lines):
        line = lines[number]
        stripped = line.strip()
        if stripped == ".. code-block:: python":
            kind = "python"
        elif stripped.endswith("::") and not stripped.startswith(".."):
            kind = "shell"
        else:
            number += 1
            continue
        depth = len(line) - len(line.lstrip())
        body: list[str] = []
        number += 1
        while number < len(lines) and (
            not lines[number].strip() or len(lines[number]) - len(lines[number].lstrip()) > depth
        ):
            body.append(lines[number])
            number += 1
        text = textwrap.dedent("\n".join(body)).strip("\n")
        if text:
            blocks.append(Block(kind, number - len(body) + 1, text))
    return blocks


def run_python(block: Block, namespace: dict[str, Any]) -> None:
    """Run the block statement by statement; one followed by ``# XError: text`` must raise it."""
    source = block.text
    tree = ast.parse(source, filename=f"README.rst:{block.line}")
    lines = source.splitlines()
    for statement in tree.body:
        end = statement.end_lineno or statement.lineno
        shown = RAISES.match(lines[end].strip()) if end < len(lines) else None
        code = compile(ast.Module([statement], []), f"README.rst:{block.line}", "exec")
        if shown is None:
            exec(code, namespace)
            continue
        with pytest.raises(Exception) as raised:  # noqa: PT011 - checked by name just below
            exec(code, namespace)
        assert type(raised.value).__name__ == shown[1]
        assert str(raised.value) == shown[2]


def with_services(text: str, services: dict[str, str]) -> str:
    for placeholder, service in PLACEHOLDERS.items():
        text = text.replace(placeholder, services[service])
    return text


def test_readme_has_the_blocks_this_test_runs() -> None:
    kinds = [block.kind for block in readme_blocks()]
    assert kinds.count("python") >= 7
    assert kinds.count("shell") >= 6


@pytest.fixture
def newcomer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder to work in, an environment without server settings, logging restored."""
    for name in ("REDIS_URL", "RABBITMQ_URL", "DATABASE_URL", "NUTRITION_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("DRAMATIQ_SHARED_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield tmp_path
    logger.remove()
    logger.add(sys.stderr)
    root.handlers[:] = handlers
    root.setLevel(level)
    set_broadcaster(None)


def test_the_usage_module_runs_its_actor_without_failing_it(
    newcomer: Path, records: list[dict[str, Any]]
) -> None:
    (module,) = [b for b in readme_blocks() if b.text.startswith("# app.py")]
    (newcomer / "app.py").write_text(module.text + "\n")
    spec = importlib.util.spec_from_file_location("readme_app", newcomer / "app.py")
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    broker = app.broker
    assert isinstance(broker, StubBroker)  # embedded: no REDIS_URL, no RABBITMQ_URL
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        app.enrich.send("imp-1", 1)
        app.enrich.send("imp-1", 2)
        broker.join(app.enrich.queue_name, fail_fast=True)  # raises what an actor raised
        worker.join()
    finally:
        worker.stop()
        get_stack(broker).broadcaster.close()
    assert broker.dead_letters == []
    failed = [r for r in records if r["level"]["no"] >= logging.ERROR]
    assert failed == []
    # Nobody expected imp-1: said once, as a warning, and the messages went on.
    unexpected = [r["message"] for r in records if "was never expected" in r["message"]]
    assert len(unexpected) == 1
    assert "CompletionTracker.expect" in unexpected[0]


def test_the_parts_run_one_by_one_as_written(
    newcomer: Path,
    redis_client: Any,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_tables(init_database(postgres_url))  # "tables made by dramatiq-shared init-db"
    services = {"postgres_url": postgres_url, "redis": REDIS_URL}
    (newcomer / "retry.json").write_text(json.dumps({"maxAttempts": 4, "baseDelay": 250}))
    broker = StubBroker()
    dramatiq.set_broker(broker)  # the broker the snippets' actors are declared on
    served: list[str] = []
    namespace: dict[str, Any] = {
        "__name__": "readme",
        "broker": broker,
        "message": dramatiq.Message(
            queue_name="default",
            actor_name="parse_note",
            args=(),
            kwargs={"import_id": "imp-1"},
            options={},
        ),
        "session": types.SimpleNamespace(get=lambda url: served.append(url) or "200 OK"),
        "url": "https://api.example.org/foods?query=flour",
    }
    parts = [
        b
        for b in readme_blocks()
        if b.kind == "python" and not b.text.startswith(("# app", "# test_"))
    ]
    try:
        for block in parts:
            run_python(
                Block(block.kind, block.line, with_services(block.text, services)), namespace
            )
        # The status snippet's actor runs as written; nobody expected its import, which
        # is logged and does not fail it.
        namespace["parse_note"]("imp-1", "note-1")
        namespace["broadcaster"].flush(timeout=5)
    finally:
        with contextlib.suppress(KeyError):
            namespace["broadcaster"].close()
        with contextlib.suppress(KeyError):
            namespace["breakers"].breakers.close()
    assert namespace["retry"].max_attempts >= 1
    assert namespace["flour"].name == "flour"
    assert served == [namespace["url"]]  # the call the breaker guarded was made
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    parsing = [r for r in logged if r["record"]["message"] == "parsing"]
    assert parsing
    assert parsing[0]["record"]["extra"]["import_id"] == "imp-1"
    events = redis_client.xrange(Keys().status("imp-1"))
    assert [json.loads(fields[b"event"])["status"] for _, fields in events] == ["PROCESSING"]


def test_the_hand_built_error_handling_keeps_dead_letters_in_a_fresh_sqlite_database(
    newcomer: Path,
) -> None:
    (block,) = [b for b in readme_blocks() if "ErrorHandling(database=" in b.text]
    url = f"sqlite:///{newcomer / 'fresh.db'}"  # a new database: no tables yet
    broker = StubBroker()
    dramatiq.set_broker(broker)
    namespace: dict[str, Any] = {"__name__": "readme", "broker": broker}
    run_python(
        Block(block.kind, block.line, block.text.replace("postgresql://app@db/app", url)), namespace
    )

    @dramatiq.actor(broker=broker, max_attempts=1)
    def breaks() -> None:
        raise RuntimeError("for good")

    message = breaks.send()
    worker = dramatiq.Worker(broker, worker_timeout=20)
    worker.start()
    try:
        broker.join(breaks.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    (row,) = DeadLetterStore(url).list()
    assert (row.message_id, row.error_type, row.error_message) == (
        message.message_id,
        "RuntimeError",
        "for good",
    )


def test_the_testing_example_passes_under_the_kit(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    (module,) = [b for b in readme_blocks() if b.text.startswith("# test_")]
    header = re.fullmatch(r"# (test_\w+\.py) -- run with: (.+)", module.text.splitlines()[0])
    assert header is not None
    name, command = header.groups()
    (pytester.path / name).write_text(module.text + "\n")
    program, *options = shlex.split(command)
    assert program == "pytest"
    result = pytester.runpytest_subprocess(*options, "-p", "no:cacheprovider", name)
    result.assert_outcomes(passed=module.text.count("\ndef test_"))
    assert module.text.count("\ndef test_") == 2  # the two examples of the seed's docs


# --- shell blocks --------------------------------------------------------------------

#: A new user's PATH: nothing of this project's on it until they put it there.
NEWCOMER_PATH = "/usr/local/bin:/usr/bin:/bin"
SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
STARTS = {"&&", "||", "|", ";", "&", "("}


def programs(command: str) -> list[str]:
    """The programs a shell line runs, in order, command substitutions included."""
    inner = SUBSTITUTION.findall(command)
    lexer = shlex.shlex(SUBSTITUTION.sub("X", command), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found, starting = [], True
    for word in lexer:
        if word in STARTS:
            starting = True
        elif starting and word == "export":
            starting = False  # a builtin; what follows are assignments
        elif starting and not re.match(r"^[A-Za-z_]\w*=", word):
            found.append(word)
            starting = False
    return found + [program for text in inner for program in programs(text)]


def test_every_command_of_the_readme_is_found_after_the_quick_start(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(sys.prefix)  # what the quick start's first step made
    script = ["set -e"]
    for block in readme_blocks():
        if block.kind != "shell":
            continue
        for text in block.text.splitlines():
            line = text.strip()
            if not line or line.startswith("#"):
                continue
            if re.fullmatch(r"(\.|source) \.venv/bin/activate", line):
                script.append(line)  # the README's own step: taken, not just looked up
                continue
            for program in programs(line):
                script.append(
                    f"command -v {shlex.quote(program)} >/dev/null"
                    f" || {{ echo {shlex.quote(f'README.rst:{block.line}: {program}')}"
                    " is not on PATH; exit 1; }"
                )
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=tmp_path,
        env={"PATH": NEWCOMER_PATH, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dramatiq" in "\n".join(script)  # the worker command was among those looked up


def test_every_file_the_readme_names_is_in_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"``([\w./-]+)``", text)) | set(re.findall(r"\b[\w-]+\.md\b", text))
    paths = [
        name
        for name in named
        if ("/" in name or name.endswith((".md", ".rst")))
        and not name.startswith(("/", "..", ".venv/"))  # not shipped: made, or beside it
        and ":" not in name
        and not name.endswith("*")
    ]
    assert "docs/architecture.rst" in paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


def test_the_main_jobs_figure_says_when_where_and_beside_what_it_was_measured() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    (figure,) = re.findall(r"On the 1,110 real recipes[^.]*(?:\.\d[^.]*)*\.[^.]*\.", text)
    assert re.search(r"\d{4}-\d{2}-\d{2}", figure), figure  # the date
    assert "load" in figure, figure  # what else the machine was doing
    assert "previous version" in figure, figure  # measured beside it, in one run
    assert "lines/s" in figure, figure

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import (
    Broadcaster,
    CompletionTracker,
    NoteStatus,
    RedisTransport,
    StatusEvent,
    __version__,
)
from dramatiq_shared.cli import main
from dramatiq_shared.db import MODELS, init_database
from dramatiq_shared.keys import DEFAULT_NAMESPACE, Keys
from dramatiq_shared.relay.auth import verify

from .conftest import assert_one_line, environment, free_port


def test_config_prints_the_effective_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:secret@db/app")
    assert main(["config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["retry"]["max_attempts"] == 4
    assert shown["database"]["url"] == "postgresql://app:***@db/app"
    assert shown["status"]["broadcast_interval"] == 250
    assert shown["circuit_breaker"]["failure_threshold"] == 5


def test_a_bad_setting_is_one_line_and_exit_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRAMATIQ_SHARED_STATUS_TIMEOUT", "soon")
    assert main(["config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "dramatiq-shared: error: DRAMATIQ_SHARED_STATUS_TIMEOUT must be an integer, got 'soon'\n"
    )


def test_the_console_script_is_installed() -> None:
    scripts = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('scripts'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    done = subprocess.run(
        [f"{scripts}/dramatiq-shared", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"dramatiq-shared {__version__}"


def test_init_db_creates_the_tables_and_is_safe_to_rerun(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        assert main(["init-db", "--database", postgres_url]) == 0
        assert capsys.readouterr().out == (
            f"{len(MODELS)} tables ready in {postgres_url.replace(':dramatiq_shared@', ':***@')}\n"
        )
    database = init_database(postgres_url)
    try:
        assert set(database.get_tables()) == {m._meta.table_name for m in MODELS}
    finally:
        database.close_all()


def test_init_db_reads_the_database_from_the_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    assert main(["init-db"]) == 0
    assert capsys.readouterr().out == f"{len(MODELS)} tables ready in {sqlite_url}\n"


def test_init_db_on_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-db", "--database", "postgresql://u:pw@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "dramatiq-shared: error: --database=postgresql://u:***@127.0.0.1:1/x: the database"
        " refused or did not answer (OperationalError:"
    )
    assert err.count("\n") == 1


def test_token_mints_a_token_the_relay_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRAMATIQ_SHARED_SECRET", "a-secret-of-at-least-16-bytes")
    assert main(["token", "imp-9", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    claims = verify(token, "a-secret-of-at-least-16-bytes", import_id="imp-9")
    assert claims.import_id == "imp-9"
    monkeypatch.delenv("DRAMATIQ_SHARED_SECRET")
    assert main(["token", "imp-9"]) == 2
    assert "set DRAMATIQ_SHARED_SECRET" in capsys.readouterr().err


def test_the_relay_refuses_to_start_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DRAMATIQ_SHARED_SECRET", raising=False)
    assert main(["relay", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "the relay needs a secret" in capsys.readouterr().err


def test_status_follows_an_import_to_its_end(
    redis_client: Any, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    transport = RedisTransport(redis_client)

    def publish() -> None:
        for n in range(1, 4):
            time.sleep(0.1)
            transport.append(
                [
                    StatusEvent(
                        "imp-s",
                        NoteStatus.PROCESSING,
                        context="import",
                        current_count=n,
                        total_count=4,
                        message=f"{n} of 4 done",
                    )
                ],
                0,
            )
        transport.append(
            [
                StatusEvent(
                    "imp-s",
                    NoteStatus.FAILED,
                    context="import",
                    current_count=4,
                    total_count=4,
                    message="1 of 4 failed",
                )
            ],
            0,
        )

    publisher = threading.Thread(target=publish)
    publisher.start()
    assert main(["status", "imp-s", "--redis-url", redis_url]) == 1  # it ended FAILED
    publisher.join()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[1].endswith("[" + "#" * 15 + "." * 15 + "] 2/4")
    assert "FAILED" in lines[-1]
    assert "1 of 4 failed" in lines[-1]
    assert main(["status", "imp-s", "--redis-url", redis_url, "--after", "3", "--no-follow"]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_workers_and_health_without_redis_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["workers"]) == 2
    assert capsys.readouterr().err == (
        "dramatiq-shared: error: this needs Redis: pass --redis-url or set REDIS_URL\n"
    )


def test_health_exits_1_when_the_database_is_down(
    redis_client: Any, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["health", "--redis-url", redis_url, "--database", "postgresql://u@127.0.0.1:1/x"])
    out = capsys.readouterr().out
    assert code == 1
    assert "redis     ok" in out
    assert "database  down: OperationalError" in out
    assert "workers   0 live" in out


def test_health_lists_breakers_and_status_reads_any_import_id(
    redis_client: Any, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys(DEFAULT_NAMESPACE)
    redis_client.hset(keys.breaker("usda-api"), mapping={"state": "open"})
    redis_client.zadd(keys.breaker_trials("usda-api"), {"lease": 1})  # a lease, not a breaker
    redis_client.hset(keys.breaker("db"), mapping={"failures": 1})
    main(["health", "--redis-url", redis_url, "--database", "postgresql://u@127.0.0.1:1/x"])
    breakers = [line for line in capsys.readouterr().out.splitlines() if "breaker" in line]
    assert sorted(breakers) == ["breaker db        closed", "breaker usda-api  open"]

    transport = RedisTransport(redis_client)
    for import_id in ("imports", "all"):  # ids that once were the names of global keys
        transport.append([StatusEvent(import_id, NoteStatus.PENDING, message=import_id)], 0)
    assert main(["status", "imports", "--redis-url", redis_url, "--no-follow"]) == 0
    assert capsys.readouterr().out.split() == ["1", "PENDING", ":", "imports"]


def test_the_metrics_exporter_serves_the_worker_processes_folder(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    writer = (
        "from dramatiq_shared.metrics import ERRORS; ERRORS.labels('an_actor', 'KeyError').inc(3)"
    )
    subprocess.run([sys.executable, "-c", writer], env=env, check=True)
    exporter = subprocess.Popen(
        [sys.executable, "-m", "dramatiq_shared.cli", "metrics", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stdout is not None
        assert "metrics of the worker processes' folder" in exporter.stdout.readline()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        exporter.terminate()
        exporter.wait(10)
    assert 'dramatiq_shared_errors_total{actor="an_actor",error_type="KeyError"} 3.0' in body


@pytest.mark.parametrize("follow", [[], ["--no-follow"]], ids=["follow", "no-follow"])
def test_status_of_an_unknown_import_says_so_and_exits_1(
    redis_client: Any, redis_url: str, capsys: pytest.CaptureFixture[str], follow: list[str]
) -> None:
    assert main(["status", "no-such-import", "--redis-url", redis_url, *follow]) == 1
    shown = capsys.readouterr()
    assert shown.err == "dramatiq-shared: no such import: no-such-import\n"
    assert shown.out == ""


def test_status_of_an_import_that_ended_is_its_final_state_at_once(
    redis_client: Any, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broadcaster = Broadcaster(RedisTransport(redis_client))
    tracker = CompletionTracker(broadcaster, redis_client=redis_client)
    tracker.expect("imp-ran", 3)
    for item in ("a", "b", "c"):
        tracker.mark_done("imp-ran", item, ok=item != "b")
    # Run again: its events stream anew, but it had ended, so no new ending comes;
    # and the stream has trimmed the old one away.
    tracker.mark_done("imp-ran", "a")
    broadcaster.publish(StatusEvent("imp-ran", NoteStatus.PROCESSING, context="note"))
    broadcaster.close()
    redis_client.xtrim(Keys(DEFAULT_NAMESPACE).status("imp-ran"), maxlen=1)
    exits: list[int] = []
    follower = threading.Thread(
        target=lambda: exits.append(main(["status", "imp-ran", "--redis-url", redis_url])),
        daemon=True,
    )
    follower.start()
    follower.join(30)
    assert not follower.is_alive(), "status is still waiting for an ending that will not come"
    assert exits == [1]  # it had FAILED
    assert capsys.readouterr().out == "import imp-ran: FAILED (3 of 3 items done, 1 failed)\n"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``dramatiq-shared ARGS`` as a process of its own, with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "dramatiq_shared.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_redis_that_is_not_there_is_one_line_naming_the_variable_for_every_command(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = environment(
        REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0",
        DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
        DRAMATIQ_SHARED_SECRET="a-secret-of-at-least-16-bytes",
    )
    for command in (["workers"], ["status", "imp-1"], ["dead-letters", "retry", "1"], ["relay"]):
        done = cli(*command, env=env)
        assert_one_line(
            "dramatiq-shared",
            done,
            f"REDIS_URL=redis://:***@127.0.0.1:{port}/0: Redis refused or did not answer",
            "Connection refused",
            "start it or correct REDIS_URL",
        )
        assert "s3cret" not in done.stderr


def test_a_server_given_by_an_option_is_named_by_the_option(missing_database_url: str) -> None:
    port = free_port()
    done = cli("status", "imp-1", "--redis-url", f"redis://127.0.0.1:{port}/0", env=environment())
    assert_one_line(
        "dramatiq-shared", done, f"--redis-url=redis://127.0.0.1:{port}/0: Redis refused", "refused"
    )
    done = cli("init-db", "--database", missing_database_url, env=environment())
    name = missing_database_url.rsplit("/", 1)[1]
    assert_one_line(
        "dramatiq-shared",
        done,
        "--database=postgresql://dramatiq_shared:***@",
        f'database "{name}" does not exist',
        "correct --database",
    )
    assert ":dramatiq_shared@" not in done.stderr  # the password, hidden


@pytest.mark.parametrize("variable", ["DATABASE_URL", "DRAMATIQ_SHARED_DB_URL"])
def test_a_database_that_does_not_exist_is_one_line_naming_the_variable(
    missing_database_url: str, variable: str
) -> None:
    name = missing_database_url.rsplit("/", 1)[1]
    for command in (["init-db"], ["dead-letters", "list"]):
        done = cli(*command, env=environment(**{variable: missing_database_url}))
        assert_one_line(
            "dramatiq-shared",
            done,
            f"{variable}=postgresql://dramatiq_shared:***@",
            "the database refused or did not answer (OperationalError: ",
            f'database "{name}" does not exist',
        )


def test_a_malformed_url_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    for command in (["workers"], ["health"], ["status", "imp-1"]):
        done = cli(*command, env=environment(REDIS_URL="notaurl", DATABASE_URL=database))
        assert_one_line(
            "dramatiq-shared",
            done,
            "REDIS_URL must be a redis://, rediss:// or unix:// URL, got 'notaurl'",
        )
    done = cli("health", "--redis-url", "redis://127.0.0.1:notaport/0", env=environment())
    assert_one_line(
        "dramatiq-shared", done, "--redis-url must be a redis://", "Port could not be cast"
    )
    for command in (["init-db"], ["dead-letters", "list"]):
        done = cli(*command, env=environment(DATABASE_URL="notaurl"))
        assert_one_line(
            "dramatiq-shared",
            done,
            "DATABASE_URL: url must be a sqlite:/// or postgresql:// URL, got 'notaurl'",
        )
    done = cli("init-db", "--database", "mysql://u:pw@db/x", env=environment())
    assert_one_line(
        "dramatiq-shared", done, "--database: url must be a sqlite:/// or postgresql:// URL"
    )
    assert "'mysql://u:***@db/x'" in done.stderr


def test_health_exits_1_when_queues_hold_messages_and_no_worker_is_live(
    redis_client: Any, redis_url: str, sqlite_url: str
) -> None:
    broker = RedisBroker(url=redis_url)
    waiting = dramatiq.actor(lambda: None, actor_name="waiting", broker=broker)
    later = dramatiq.actor(lambda: None, actor_name="later", queue_name="later", broker=broker)
    for _ in range(3):
        waiting.send()
    later.send_with_options(delay=60_000)
    env = environment(REDIS_URL=redis_url, DATABASE_URL=sqlite_url)
    done = cli("health", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ""
    lines = [" ".join(line.split()) for line in done.stdout.splitlines()]
    assert lines == [
        "redis ok",
        "workers down: 0 live while queues hold messages (default 3, later 1); start workers",
        "queue default 3 ready, 0 delayed, 0 dead",
        "queue later 0 ready, 1 delayed, 0 dead",
        "database ok",
    ]
    broker.flush_all()  # nothing waiting: no worker is no fault
    done = cli("health", env=env)
    assert done.returncode == 0, done.stdout
    assert [" ".join(line.split()) for line in done.stdout.splitlines()] == [
        "redis ok",
        "workers 0 live",
        "database ok",
    ]
    broker.close()

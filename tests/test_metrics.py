"""A scrape of /metrics after retries, a breaker trip and failures shows what happened."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import dramatiq
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from dramatiq_shared import CircuitBreakerConfig, MemoryTransport, get_stack, setup_broker
from dramatiq_shared.relay import MemorySource, create_app

from .relay.conftest import SECRET, RunningRelay


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_after_retries_a_breaker_trip_and_failures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("REDIS_URL", "RABBITMQ_URL", "PROMETHEUS_MULTIPROC_DIR", "DRAMATIQ_SHARED_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'metrics.db'}")
    broker = setup_broker(
        retry={"baseDelay": 5, "maxDelay": 10},
        breakers={"metrics-api": CircuitBreakerConfig(failure_threshold=1, reset_timeout=100)},
    )
    stack = get_stack(broker)
    stack.breakers.jitter = 10
    runs: list[str] = []

    @dramatiq.actor(max_attempts=3)
    def metrics_flaky() -> None:
        runs.append("flaky")
        if runs.count("flaky") == 1:
            raise ConnectionError("blip")

    @dramatiq.actor(max_attempts=1)
    def metrics_fails(import_id: str) -> None:
        raise ValueError("bad")

    @dramatiq.actor(breaker="metrics-api")
    def metrics_guarded() -> None:
        runs.append("guarded")

    with pytest.raises(TimeoutError), stack.breakers.breakers["metrics-api"]:
        raise TimeoutError("the api is down")  # trips the breaker
    sent_before = REGISTRY.get_sample_value("dramatiq_shared_broadcasts_total", {"outcome": "sent"})
    metrics_flaky.send()
    metrics_fails.send("imp-metrics")  # PROCESSING, then FAILED
    metrics_guarded.send()
    worker = dramatiq.Worker(broker, worker_timeout=20)
    worker.start()
    broker.join("default", fail_fast=False)
    worker.join()
    worker.stop()
    stack.broadcaster.close()
    assert runs.count("guarded") == 1  # deferred while open, ran after

    transport = stack.broadcaster.transport
    assert isinstance(transport, MemoryTransport)

    def make() -> web.Application:
        return create_app(MemorySource(transport), secret=SECRET)

    with RunningRelay(make) as relay:
        samples = scrape(relay.url)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    decisions = "dramatiq_shared_retry_decisions_total"
    assert (
        value(decisions, actor="metrics_flaky", error_type="ConnectionError", action="retry") == 1
    )
    assert value(decisions, actor="metrics_fails", error_type="ValueError", action="exhausted") == 1
    assert (
        value("dramatiq_shared_errors_total", actor="metrics_flaky", error_type="ConnectionError")
        == 1
    )
    assert (
        value("dramatiq_shared_errors_total", actor="metrics_fails", error_type="ValueError") == 1
    )
    transitions = "dramatiq_shared_breaker_transitions_total"
    assert value(transitions, breaker="metrics-api", state="open") == 1
    assert value(transitions, breaker="metrics-api", state="closed") == 1
    assert value("dramatiq_shared_breaker_rejected_total", breaker="metrics-api") >= 1
    assert value("dramatiq_shared_breaker_state", breaker="metrics-api") == 0
    assert (
        value("dramatiq_shared_db_operation_seconds_count", operation="DeadLetterStore.record") >= 1
    )
    sent = value("dramatiq_shared_broadcasts_total", outcome="sent") - (sent_before or 0)
    assert sent == 2
    assert value("dramatiq_shared_messages_in_flight") == 0

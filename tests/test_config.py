from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from dramatiq.middleware.time_limit import TimeLimitExceeded

from dramatiq_shared import (
    CircuitBreakerConfig,
    ConfigError,
    DatabaseConfig,
    PermanentError,
    RetryBudgetConfig,
    RetryConfig,
    StatusConfig,
    TransientError,
    ValidationError,
)
from dramatiq_shared.config import error_matches, resolve_error_specs

# (config class, field, bad value, words the message must contain)
BAD_VALUES: list[tuple[type[Any], str, Any, str]] = [
    (RetryConfig, "max_attempts", 0, "an int >= 1"),
    (RetryConfig, "max_attempts", "3", "an int >= 1"),
    (RetryConfig, "max_attempts", True, "an int >= 1"),
    (RetryConfig, "max_attempts", 2.5, "an int >= 1"),
    (RetryConfig, "base_delay", -1, "an int >= 0"),
    (RetryConfig, "max_delay", -5, "an int >= 0"),
    (RetryConfig, "max_delay", 7 * 24 * 3600 * 1000 + 1, "an int >= 0 and <= 604800000"),
    (RetryConfig, "retryable_errors", "TimeoutError", "a list of exception classes or names"),
    (RetryConfig, "retryable_errors", [42], "an exception class or its name"),
    (RetryConfig, "retryable_errors", [int], "an exception class or its name"),
    (RetryConfig, "retryable_errors", ["not a name"], "an exception class or its name"),
    (RetryConfig, "retryable_errors", ["no_such_module.Error"], "importable exception class"),
    (RetryConfig, "retryable_errors", ["json.dumps"], "the name of an exception class"),
    (RetryConfig, "jitter", "gaussian", "decorrelated, full, equal, none"),
    (RetryConfig, "jitter", 1, "True, False or one of"),
    (RetryConfig, "circuit_breaker", 5, "a CircuitBreakerConfig, a mapping or None"),
    (RetryConfig, "circuit_breaker", {"failureThreshold": 0}, ".failure_threshold must be an"),
    (RetryConfig, "budget", "10%", "a RetryBudgetConfig, a mapping or None"),
    (RetryConfig, "budget", {"ratio": -0.1}, ".ratio must be a finite number >= 0"),
    (RetryBudgetConfig, "ratio", -0.5, "a finite number >= 0"),
    (RetryBudgetConfig, "ratio", float("nan"), "a finite number >= 0"),
    (RetryBudgetConfig, "ratio", True, "a finite number >= 0"),
    (RetryBudgetConfig, "minimum", "10", "a finite number >= 0"),
    (RetryBudgetConfig, "minimum", float("inf"), "a finite number >= 0"),
    (RetryBudgetConfig, "minimum", 0, "> 0 when refused retries are deferred"),
    (RetryBudgetConfig, "window", 99, "an int >= 100 and <= 3600000"),
    (RetryBudgetConfig, "window", 10.5, "an int >= 100 and <= 3600000"),
    (RetryBudgetConfig, "when_refused", "drop", "'defer' or 'dead_letter'"),
    (CircuitBreakerConfig, "failure_threshold", 0, "an int >= 1"),
    (CircuitBreakerConfig, "reset_timeout", 0, "an int >= 1"),
    (CircuitBreakerConfig, "success_threshold", None, "an int >= 1"),
    (CircuitBreakerConfig, "excluded_errors", None, "a list of exception classes or names"),
    (CircuitBreakerConfig, "excluded_errors", [object], "an exception class or its name"),
    (CircuitBreakerConfig, "trial_timeout", 0, "an int >= 1"),
    (CircuitBreakerConfig, "max_reset_timeout", 59_999, "an int >= 60000"),
    (CircuitBreakerConfig, "window", "sliding", "'count' or 'time'"),
    (CircuitBreakerConfig, "window_size", 10_001, "an int >= 1 and <= 10000"),
    (CircuitBreakerConfig, "failure_rate_threshold", 101, "a percentage above 0 and at most 100"),
    (CircuitBreakerConfig, "minimum_calls", 0, "an int >= 1"),
    (CircuitBreakerConfig, "slow_call_duration", 0, "an int >= 1"),
    (CircuitBreakerConfig, "slow_call_rate_threshold", True, "a percentage above 0"),
    (CircuitBreakerConfig, "half_open_calls", 0, "an int >= 1"),
    (DatabaseConfig, "url", "mysql://db/x", "a sqlite:/// or postgresql:// URL"),
    (DatabaseConfig, "url", 5432, "a sqlite:/// or postgresql:// URL"),
    (DatabaseConfig, "connection_limit", 0, "an int >= 1"),
    (DatabaseConfig, "timeout", 0, "an int >= 1"),
    (DatabaseConfig, "retry_attempts", -1, "an int >= 0"),
    (DatabaseConfig, "batch_size", 0, "an int >= 1"),
    (StatusConfig, "broadcast_interval", -1, "an int >= 0"),
    (StatusConfig, "max_retries", "three", "an int >= 0"),
    (StatusConfig, "timeout", 0, "an int >= 1"),
    (StatusConfig, "batch_size", 0, "an int >= 1"),
    (StatusConfig, "reclaim_after", -5, "an int >= 1"),
    (StatusConfig, "linger", 10_001, "an int >= 0 and <= 10000"),
]


@pytest.mark.parametrize(("config", "field", "value", "allowed"), BAD_VALUES)
def test_a_bad_value_is_refused_naming_field_value_and_what_is_allowed(
    config: type[Any], field: str, value: Any, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**{field: value})
    message = str(caught.value)
    assert message.startswith(field), message
    assert allowed in message
    shown = value[0] if isinstance(value, list) else value
    if not isinstance(shown, (type, dict)):
        assert repr(shown)[:20] in message


def test_every_field_of_every_config_is_covered_by_a_bad_value() -> None:
    covered = {(config, field) for config, field, *_ in BAD_VALUES}
    configs = (RetryConfig, RetryBudgetConfig, CircuitBreakerConfig, DatabaseConfig, StatusConfig)
    for config in configs:
        for field in dataclasses.fields(config):
            assert (config, field.name) in covered, f"{config.__name__}.{field.name}"


def test_max_delay_below_base_delay_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"max_delay must be >= base_delay \(5000\), got 100"):
        RetryConfig(base_delay=5000, max_delay=100)


def test_a_config_error_is_a_value_error_and_names_its_field() -> None:
    with pytest.raises(ValueError, match="max_attempts must be an int >= 1, got 0") as caught:
        RetryConfig(max_attempts=0)
    assert isinstance(caught.value, ConfigError)
    assert caught.value.field == "max_attempts"


def test_the_password_of_a_refused_url_is_hidden() -> None:
    with pytest.raises(ConfigError) as caught:
        DatabaseConfig(url="mysql://admin:s3cret@db/x")
    assert "s3cret" not in str(caught.value)
    assert "admin:***@db" in str(caught.value)


def test_defaults_are_those_of_the_design() -> None:
    assert RetryConfig() == RetryConfig(
        max_attempts=3, base_delay=1000, max_delay=30000, jitter="decorrelated"
    )
    assert RetryConfig().retryable_errors is None
    assert CircuitBreakerConfig() == CircuitBreakerConfig(
        failure_threshold=5,
        reset_timeout=60000,
        success_threshold=1,
        excluded_errors=(),
        trial_timeout=30000,
        max_reset_timeout=480000,
        window="count",
        window_size=100,
        failure_rate_threshold=None,
        minimum_calls=100,
        slow_call_duration=None,
        slow_call_rate_threshold=None,
        half_open_calls=1,
    )
    assert not CircuitBreakerConfig().counts_rates
    assert DatabaseConfig() == DatabaseConfig(
        url="sqlite:///dramatiq_shared.db",
        connection_limit=8,
        timeout=10000,
        retry_attempts=3,
        batch_size=500,
    )
    assert RetryConfig().budget is None  # no budget: retries as before, at no cost
    assert RetryBudgetConfig() == RetryBudgetConfig(
        ratio=0.1, minimum=10, window=10_000, when_refused="defer"
    )
    assert StatusConfig() == StatusConfig(
        broadcast_interval=250,
        max_retries=3,
        timeout=5000,
        batch_size=100,
        reclaim_after=60000,
        linger=20,
    )


def test_configs_are_frozen_and_hashable() -> None:
    config = RetryConfig(retryable_errors=["TimeoutError"])
    with pytest.raises(AttributeError):
        config.max_attempts = 5  # type: ignore[misc]
    assert hash(config) == hash(RetryConfig(retryable_errors=("TimeoutError",)))


# A config as the TypeScript system wrote it, and the same in snake_case.
TYPESCRIPT_RETRY = """{
  "maxAttempts": 5, "baseDelay": 200, "maxDelay": 8000,
  "retryableErrors": ["TimeoutError", "ConnectionError"], "jitter": false,
  "circuitBreaker": {"failureThreshold": 3, "resetTimeout": 30000, "successThreshold": 2}
}"""
SNAKE_RETRY = {
    "max_attempts": 5,
    "base_delay": 200,
    "max_delay": 8000,
    "retryable_errors": ["TimeoutError", "ConnectionError"],
    "jitter": False,
    "circuit_breaker": {"failure_threshold": 3, "reset_timeout": 30000, "success_threshold": 2},
}


def test_camel_case_mappings_of_the_typescript_system_load_like_snake_case() -> None:
    from_typescript = RetryConfig.from_mapping(json.loads(TYPESCRIPT_RETRY))
    assert from_typescript == RetryConfig.from_mapping(SNAKE_RETRY)
    assert from_typescript == RetryConfig(
        max_attempts=5,
        base_delay=200,
        max_delay=8000,
        retryable_errors=("TimeoutError", "ConnectionError"),
        jitter="none",
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=3, reset_timeout=30000, success_threshold=2
        ),
    )


@pytest.mark.parametrize(
    ("config", "camel", "snake"),
    [
        (
            DatabaseConfig,
            {
                "url": "postgresql://u@h/db",
                "connectionLimit": 4,
                "retryAttempts": 1,
                "batchSize": 9,
            },
            {
                "url": "postgresql://u@h/db",
                "connection_limit": 4,
                "retry_attempts": 1,
                "batch_size": 9,
            },
        ),
        (
            StatusConfig,
            {"broadcastInterval": 100, "maxRetries": 1, "timeout": 50, "batchSize": 10},
            {"broadcast_interval": 100, "max_retries": 1, "timeout": 50, "batch_size": 10},
        ),
        (
            CircuitBreakerConfig,
            {"failureThreshold": 2, "excludedErrors": ["KeyError"]},
            {"failure_threshold": 2, "excluded_errors": ["KeyError"]},
        ),
        (
            # resilience4j's names for the rate settings
            CircuitBreakerConfig,
            {
                "slidingWindowType": "TIME_BASED",
                "slidingWindowSize": 5000,
                "failureRateThreshold": 50,
                "minimumNumberOfCalls": 20,
                "slowCallDurationThreshold": 200,
                "slowCallRateThreshold": 80,
                "permittedNumberOfCallsInHalfOpenState": 3,
            },
            {
                "window": "time",
                "window_size": 5000,
                "failure_rate_threshold": 50,
                "minimum_calls": 20,
                "slow_call_duration": 200,
                "slow_call_rate_threshold": 80,
                "half_open_calls": 3,
            },
        ),
        (
            RetryBudgetConfig,
            {"ratio": 0.2, "minimum": 1.5, "window": 5000, "whenRefused": "dead_letter"},
            {"ratio": 0.2, "minimum": 1.5, "window": 5000, "when_refused": "dead_letter"},
        ),
    ],
)
def test_every_config_accepts_both_spellings(
    config: type[Any], camel: dict[str, Any], snake: dict[str, Any]
) -> None:
    assert config.from_mapping(camel) == config.from_mapping(snake) == config(**snake)


def test_an_unknown_key_is_refused_with_the_allowed_keys_listed() -> None:
    with pytest.raises(ConfigError) as caught:
        RetryConfig.from_mapping({"maxAttempts": 2, "maxAttempt": 3})
    message = str(caught.value)
    assert "'maxAttempt'" in message
    for allowed in ("max_attempts", "base_delay", "max_delay", "retryable_errors", "jitter"):
        assert allowed in message


def test_a_budget_loads_nested_in_a_retry_config_from_camel_case() -> None:
    config = RetryConfig.from_mapping({"maxAttempts": 4, "budget": {"ratio": 0.5, "minimum": 2}})
    assert config.budget == RetryBudgetConfig(ratio=0.5, minimum=2)
    assert config.as_dict()["budget"] == {
        "ratio": 0.5,
        "minimum": 2.0,
        "window": 10_000,
        "when_refused": "defer",
    }
    with pytest.raises(ConfigError, match="RetryBudgetConfig has no setting 'rate'"):
        RetryConfig.from_mapping({"budget": {"rate": 0.5}})


def test_the_budget_allows_ratio_times_successes_plus_minimum_times_seconds() -> None:
    budget = RetryBudgetConfig(ratio=0.1, minimum=10, window=10_000)
    assert budget.allowance(0) == 100
    assert budget.allowance(2_000) == 300
    assert budget.bucket == 1_000


def test_an_unknown_key_of_a_nested_breaker_is_refused() -> None:
    with pytest.raises(ConfigError, match="CircuitBreakerConfig has no setting 'threshold'"):
        RetryConfig.from_mapping({"circuitBreaker": {"threshold": 3}})


def test_a_key_given_in_both_spellings_is_refused() -> None:
    with pytest.raises(ConfigError, match="'max_attempts' given twice"):
        RetryConfig.from_mapping({"maxAttempts": 2, "max_attempts": 3})


def test_from_mapping_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"StatusConfig must be a mapping of settings, got \[1\]"):
        StatusConfig.from_mapping([1])  # type: ignore[arg-type]


def test_from_env_reads_documented_variables() -> None:
    environ = {
        "DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS": "7",
        "DRAMATIQ_SHARED_RETRY_BASE_DELAY": " 50 ",
        "DRAMATIQ_SHARED_RETRY_RETRYABLE_ERRORS": "TimeoutError, OSError",
        "DRAMATIQ_SHARED_RETRY_JITTER": "full",
        "DRAMATIQ_SHARED_BREAKER_FAILURE_THRESHOLD": "2",
        "DRAMATIQ_SHARED_RETRY_BUDGET_RATIO": "0.25",
        "DRAMATIQ_SHARED_RETRY_BUDGET_MINIMUM": "2.5",
        "DRAMATIQ_SHARED_RETRY_BUDGET_WINDOW": "20000",
        "DRAMATIQ_SHARED_RETRY_BUDGET_WHEN_REFUSED": "dead_letter",
        "DRAMATIQ_SHARED_STATUS_BROADCAST_INTERVAL": "0",
        "DATABASE_URL": "postgresql://u:pw@db:5432/app",
        "DRAMATIQ_SHARED_DB_BATCH_SIZE": "1000",
    }
    assert RetryConfig.from_env(environ) == RetryConfig(
        max_attempts=7,
        base_delay=50,
        retryable_errors=["TimeoutError", "OSError"],
        jitter="full",
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2),
        budget=RetryBudgetConfig(
            ratio=0.25, minimum=2.5, window=20_000, when_refused="dead_letter"
        ),
    )
    assert StatusConfig.from_env(environ) == StatusConfig(broadcast_interval=0)
    database = DatabaseConfig.from_env(environ)
    assert database == DatabaseConfig(url="postgresql://u:pw@db:5432/app", batch_size=1000)
    assert database.as_dict()["url"] == "postgresql://u:***@db:5432/app"


def test_from_env_prefers_the_specific_database_variable() -> None:
    environ = {"DATABASE_URL": "postgresql://a/x", "DRAMATIQ_SHARED_DB_URL": "sqlite:///b.db"}
    assert DatabaseConfig.from_env(environ).url == "sqlite:///b.db"


def test_a_database_is_configured_by_either_variable() -> None:
    assert DatabaseConfig.url_configured({"DATABASE_URL": "postgresql://a/x"})
    assert DatabaseConfig.url_configured({"DRAMATIQ_SHARED_DB_URL": "sqlite:///b.db"})
    assert not DatabaseConfig.url_configured({"DATABASE_URL": "", "REDIS_URL": "redis://r"})


def test_from_env_with_nothing_set_gives_defaults() -> None:
    assert RetryConfig.from_env({}) == RetryConfig()
    assert DatabaseConfig.from_env({"DATABASE_URL": "  "}) == DatabaseConfig()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS": "many"},
            "DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS must be an integer, got 'many'",
        ),
        (
            {"DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS": "0"},
            "DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS: max_attempts must be an int >= 1, got 0",
        ),
        (
            {"DRAMATIQ_SHARED_RETRY_BUDGET_RATIO": "ten percent"},
            "DRAMATIQ_SHARED_RETRY_BUDGET_RATIO must be a number, got 'ten percent'",
        ),
        (
            {"DRAMATIQ_SHARED_RETRY_BUDGET_WHEN_REFUSED": "drop"},
            "DRAMATIQ_SHARED_RETRY_BUDGET_WHEN_REFUSED: when_refused must be 'defer' or",
        ),
        (
            {"DATABASE_URL": "redis://x"},
            "DATABASE_URL: url must be a sqlite:/// or postgresql:// URL, got 'redis://x'",
        ),
    ],
)
def test_from_env_names_the_variable_of_a_bad_value(environ: dict[str, str], expected: str) -> None:
    config = DatabaseConfig if "DATABASE_URL" in environ else RetryConfig
    with pytest.raises(ConfigError, match=re.escape(expected)):
        config.from_env(environ)


class ServiceDownError(ConnectionError):
    pass


@pytest.mark.parametrize(
    ("specs", "error", "expected"),
    [
        (["ConnectionError"], ServiceDownError(), True),  # a subclass matches by its base's name
        ([ConnectionError], ServiceDownError(), True),
        (["json.JSONDecodeError"], json.JSONDecodeError("x", "y", 0), True),
        (["json.JSONDecodeError"], ValueError(), False),
        (["ValueError"], json.JSONDecodeError("x", "y", 0), True),
        (["TimeoutError"], KeyError(), False),
    ],
)
def test_error_specs_match_classes_names_and_subclasses(
    specs: list[Any], error: BaseException, expected: bool
) -> None:
    assert error_matches(error, resolve_error_specs("retryable_errors", specs)) is expected


def test_retryable_errors_none_means_every_exception_and_time_limits() -> None:
    config = RetryConfig()
    assert config.is_retryable(ValueError())
    assert config.is_retryable(TimeLimitExceeded())
    assert not config.is_retryable(KeyboardInterrupt())
    assert RetryConfig(retryable_errors=["TimeoutError"]).is_retryable(TimeoutError())
    assert not RetryConfig(retryable_errors=[]).is_retryable(ValueError())


def test_permanent_errors_never_retry_and_transient_errors_always_may() -> None:
    everything, nothing = RetryConfig(), RetryConfig(retryable_errors=[])
    assert not everything.is_retryable(PermanentError("bad"))
    assert not everything.is_retryable(ValidationError("bad input"))
    assert nothing.is_retryable(TransientError("try again"))


def test_a_slow_call_rate_needs_a_slow_call_duration_and_defaults_to_100() -> None:
    with pytest.raises(ConfigError, match="slow_call_rate_threshold needs slow_call_duration"):
        CircuitBreakerConfig(slow_call_rate_threshold=50)
    config = CircuitBreakerConfig(slow_call_duration=200)
    assert config.slow_call_rate_threshold == 100.0
    assert config.counts_rates
    assert config.failure_rate_threshold is None


def test_a_time_window_is_at_least_10_ms_and_a_minimum_beyond_a_count_window_is_its_size() -> None:
    with pytest.raises(ConfigError, match="window_size must be an int >= 10, got 9"):
        CircuitBreakerConfig(window="time", window_size=9)
    assert CircuitBreakerConfig(window_size=10, minimum_calls=50).window_minimum == 10
    timed = CircuitBreakerConfig(window="time", window_size=10, minimum_calls=50)
    assert timed.window_minimum == 50


def test_breaker_exclusions() -> None:
    config = CircuitBreakerConfig(excluded_errors=["KeyError", ValueError])
    assert config.is_excluded(KeyError())
    assert config.is_excluded(json.JSONDecodeError("x", "y", 0))
    assert not config.is_excluded(TimeoutError())


def test_as_dict_is_json_ready() -> None:
    config = RetryConfig(
        retryable_errors=[json.JSONDecodeError, "TimeoutError"], circuit_breaker={}
    )
    assert json.loads(json.dumps(config.as_dict())) == {
        "max_attempts": 3,
        "base_delay": 1000,
        "max_delay": 30000,
        "retryable_errors": ["json.decoder.JSONDecodeError", "TimeoutError"],
        "jitter": "decorrelated",
        "circuit_breaker": {
            "failure_threshold": 5,
            "reset_timeout": 60000,
            "success_threshold": 1,
            "excluded_errors": [],
            "trial_timeout": 30000,
            "max_reset_timeout": 480000,
            "window": "count",
            "window_size": 100,
            "failure_rate_threshold": None,
            "minimum_calls": 100,
            "slow_call_duration": None,
            "slow_call_rate_threshold": None,
            "half_open_calls": 1,
        },
        "budget": None,
    }

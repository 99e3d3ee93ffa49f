from __future__ import annotations

import pytest

from dramatiq_shared import (
    AuthError,
    CircuitOpenError,
    ConfigError,
    Defer,
    DramatiqSharedError,
    PermanentError,
    TransientError,
    ValidationError,
)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("x"),
        ValidationError("x"),
        PermanentError("x"),
        TransientError("x"),
        CircuitOpenError("api", 10),
        Defer(5),
        AuthError("expired", "x"),
    ],
)
def test_every_error_derives_from_the_one_base(error: Exception) -> None:
    assert isinstance(error, DramatiqSharedError)


def test_config_and_validation_errors_are_value_errors_and_bad_input_is_permanent() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(ValidationError, PermanentError)
    assert not issubclass(ConfigError, PermanentError)
    assert not issubclass(TransientError, PermanentError)


def test_validation_error_names_field_and_value() -> None:
    error = ValidationError.invalid("line_index", -1, "an int >= 0")
    assert str(error) == "line_index must be an int >= 0, got -1"
    assert error.field == "line_index"
    assert isinstance(error, ValidationError)


def test_huge_values_are_shortened_in_messages() -> None:
    error = ValidationError.invalid("value", "x" * 10_000, "a string of at most 1000 characters")
    assert len(str(error)) < 200
    assert str(error).endswith("...")


def test_circuit_open_error_carries_breaker_and_remaining_time() -> None:
    error = CircuitOpenError("usda-api", 1500)
    assert (error.breaker, error.remaining) == ("usda-api", 1500)
    assert str(error) == "circuit breaker 'usda-api' is open for another 1500 ms"


def test_defer_carries_its_delay_and_reason() -> None:
    error = Defer(2000, reason="waiting for upstream")
    assert (error.delay, error.reason) == (2000, "waiting for upstream")
    assert str(error) == "waiting for upstream for 2000 ms"


@pytest.mark.parametrize("delay", [-1, 1.5, "10", True, None])
def test_defer_refuses_a_bad_delay(delay: object) -> None:
    with pytest.raises(ValidationError, match="delay must be an int >= 0"):
        Defer(delay)  # type: ignore[arg-type]

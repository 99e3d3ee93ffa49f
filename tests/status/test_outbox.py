"""The outbox: ordered batches, one token across tries, backoff, bounded keeping."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dramatiq_shared import StatusConfig
from dramatiq_shared.status import outbox as outbox_module
from dramatiq_shared.status.outbox import Batch, Outbox


class Receiver:
    """Takes batches, or refuses them while ``down``; records every try's tokens."""

    def __init__(self) -> None:
        self.down = False
        self.tries: list[list[str]] = []
        self.taken: list[str] = []

    def __call__(self, batches: Sequence[Batch[str]]) -> None:
        self.tries.append([batch.token for batch in batches])
        if self.down:
            raise ConnectionError("down")
        self.taken += [item for batch in batches for item in batch.items]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def outbox(receiver: Receiver, clock: Clock, dropped: list[int], *, together: bool) -> Outbox[str]:
    config = StatusConfig(max_retries=0)  # no sleeping between tries
    return Outbox("send", receiver, config, together=together, dropped=dropped.append, clock=clock)


@pytest.mark.parametrize("together", [False, True])
def test_refused_batches_are_kept_in_order_under_their_tokens(together: bool) -> None:
    receiver, clock, dropped = Receiver(), Clock(), []
    box = outbox(receiver, clock, dropped, together=together)
    first, second = Batch(["a", "b"]), Batch(["c"])
    box.add(first)
    box.add(second)
    receiver.down = True
    assert not box.drain()
    assert len(box) == 3
    receiver.down = False
    assert box.drain(force=True)
    assert receiver.taken == ["a", "b", "c"]
    tokens = [token for tries in receiver.tries for token in tries]
    assert set(tokens) == {first.token, second.token}  # the same tokens on every try
    if together:
        assert receiver.tries == [[first.token, second.token]] * 2
    else:
        assert receiver.tries == [[first.token], [first.token], [second.token]]
    assert dropped == []


def test_a_refusal_backs_off_doubling_up_to_30_s_and_a_success_resets_it() -> None:
    receiver, clock, dropped = Receiver(), Clock(), []
    box = outbox(receiver, clock, dropped, together=False)
    box.add(Batch(["a"]))
    receiver.down = True
    waits = []
    for _ in range(7):
        clock.now = box.retry_at
        assert not box.drain()
        waits.append(box.retry_at - clock.now)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    clock.now += 1.0
    assert not box.drain()  # backing off: not even tried
    assert len(receiver.tries) == 7
    receiver.down = False
    clock.now = box.retry_at
    assert box.drain()
    assert box.retry_at == 0.0
    box.add(Batch(["b"]))
    receiver.down = True
    box.drain()
    assert box.retry_at - clock.now == 1.0


def test_retries_are_bounded_by_max_retries_and_the_timeout() -> None:
    receiver = Receiver()
    receiver.down = True
    config = StatusConfig(max_retries=2, timeout=5_000)
    box: Outbox[str] = Outbox("send", receiver, config, together=False, dropped=[].append)
    box.add(Batch(["a"]))
    assert not box.drain()
    assert len(receiver.tries) == 3
    receiver.tries.clear()
    config = StatusConfig(max_retries=100, timeout=1)
    box = Outbox("send", receiver, config, together=False, dropped=[].append)
    box.add(Batch(["a"]))
    assert not box.drain()
    assert len(receiver.tries) <= 2  # the timeout ends the retries first


def test_beyond_the_limit_the_oldest_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "MAX_UNPERSISTED", 3)
    receiver, clock, dropped = Receiver(), Clock(), []
    box = outbox(receiver, clock, dropped, together=True)
    receiver.down = True
    for items in (["a", "b"], ["c"], ["d", "e"]):
        box.add(Batch(items))
        box.drain(force=True)
    assert dropped == [2]
    receiver.down = False
    assert box.drain(force=True)
    assert receiver.taken == ["c", "d", "e"]


def test_only_the_oldest_batches_are_dropped_and_never_the_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "MAX_UNPERSISTED", 10)
    batches = [["a"] * 4, ["b"] * 4, ["c"] * 4, ["d"] * 4]
    assert outbox_module._drop_oldest(batches, len) == 8  # 16 waiting → 8
    assert batches == [["c"] * 4, ["d"] * 4]
    newest_alone = [["e"] * 25]
    assert outbox_module._drop_oldest(newest_alone, len) == 0
    assert newest_alone == [["e"] * 25]

"""Keys: one layout, in which no name a user picks can be the key of another thing."""

from __future__ import annotations

import itertools

import redis

from dramatiq_shared.keys import DEFAULT_NAMESPACE, Keys

#: Names that are, or end or start like, parts of the layout.
NAMES = [
    "all",
    "imports",
    "status",
    "global:status",
    "import:status:x",
    "x",
    "x:items",
    "x:events",
    "events:x",
    "state:x",
    "x:trial",
    "changes",
    "*",
    ":",
    "",
    "{x}",
    "\u200b",
    "i" * 1_000,
]


def every_key(keys: Keys, name: str) -> dict[str, str]:
    """Each key the layout builds from ``name``, by what it is."""
    return {
        "status": keys.status(name),
        "completion": keys.completion(name),
        "completion items": keys.completion_items(name),
        "batch": keys.batch(name),
        "batch events": keys.batch_events(name),
        "breaker": keys.breaker(name),
        "breaker trials": keys.breaker_trials(name),
        "breaker count window": keys.breaker_window(name, "count"),
        "breaker time window": keys.breaker_window(name, "time"),
        "retry budget": keys.retry_budget(name),
    }


def test_no_two_names_or_kinds_share_a_key() -> None:
    keys = Keys()
    built = [(kind, name, key) for name in NAMES for kind, key in every_key(keys, name).items()] + [
        (kind, "", key) for kind, key in _globals(keys).items()
    ]
    for (kind_a, name_a, key_a), (kind_b, name_b, key_b) in itertools.combinations(built, 2):
        assert key_a != key_b, (kind_a, name_a, kind_b, name_b)
    # Distinct keys could still collide with a longer name unless no fixed part is the
    # start of another: check that directly.
    prefixes = [key for kind, name, key in built if name == ""]
    for a, b in itertools.permutations(prefixes, 2):
        assert not b.startswith(a), (a, b)


def test_names_come_back_from_their_keys() -> None:
    keys = Keys("ns")
    assert repr(keys) == "Keys('ns')"
    assert Keys().namespace == DEFAULT_NAMESPACE
    for name in NAMES:
        assert keys.breaker_name(keys.breaker(name)) == name


def test_scan_patterns_match_only_their_namespace_and_kind(redis_client: redis.Redis) -> None:
    odd, plain = Keys("a*[b]"), Keys("a")
    for keys in (odd, plain, Keys("axxb")):
        for name in NAMES[:6]:
            for key in every_key(keys, name).values():
                redis_client.set(key, "1")
        redis_client.set(keys.worker("host", 7), "1")
        redis_client.set(keys.worker("host:with:colons", 8), "1")
    for keys in (odd, plain):
        found = {k.decode() for k in redis_client.scan_iter(match=keys.breaker_pattern())}
        assert found == {keys.breaker(name) for name in NAMES[:6]}
        found = {k.decode() for k in redis_client.scan_iter(match=keys.worker_pattern())}
        assert found == {keys.worker("host", 7), keys.worker("host:with:colons", 8)}


def _globals(keys: Keys) -> dict[str, str]:
    return {
        "all status": keys.all_status,
        "imports": keys.imports,
        "unpersisted": keys.unpersisted,
        "breaker events": keys.breaker_events,
        "dead letters": keys.dead_letters,
        "breaker changes": keys.breaker_changes,
        "workers": keys.worker_pattern()[: -len("*")],
    }

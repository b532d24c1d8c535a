"""The storage layer: every family's operations on each backend that offers them, sync and async."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import pytest

from mlflow_lite_plugin.storage import (
    BackendSkipped,
    BreakerSettings,
    MemoryStorage,
    RedisStorage,
    SQLiteStorage,
    StorageError,
    open_storage,
)


@pytest.fixture
def make(tmp_path, request):
    """make(kind, **options): a fresh storage of that kind (Redis: keys of its own)."""

    def make(kind, **options):
        if kind == "memory":
            return MemoryStorage(**options)
        if kind == "sqlite":
            return SQLiteStorage(tmp_path / f"{uuid.uuid4().hex}.db", **options)
        url = request.getfixturevalue("redis_url")
        return RedisStorage(url, prefix=options.pop("prefix", f"test:{uuid.uuid4().hex}:"), **options)

    return make


# -- key-value (the exact cache) --


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_key_value_sync_and_async_twins_see_the_same_entries(make, kind):
    storage = make(kind)
    storage.set("a", {"text": "one"}, None)
    assert asyncio.run(storage.aget("a")) == {"text": "one"}
    asyncio.run(storage.aset("b", {"text": "two"}, 60))
    assert storage.get("b") == {"text": "two"} and storage.get("missing") is None
    assert storage.count() == 2 and asyncio.run(storage.acount()) == 2
    asyncio.run(storage.aclear())
    assert storage.count() == 0 and storage.get("a") is None


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_key_value_entries_expire(make, kind):
    storage = make(kind)
    storage.set("short", {"v": 1}, 0.2)
    storage.set("long", {"v": 2}, 60)
    assert storage.get("short") == {"v": 1}
    time.sleep(0.35)
    assert storage.get("short") is None and storage.get("long") == {"v": 2}
    assert storage.count() == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_key_value_evicts_the_least_recently_used(make, kind):
    storage = make(kind, max_entries=2)
    storage.set("a", {"v": "a"}, None)
    time.sleep(0.01)  # SQLite orders by the time of use
    storage.set("b", {"v": "b"}, None)
    time.sleep(0.01)
    assert storage.get("a") == {"v": "a"}  # "a" is now the most recently used
    time.sleep(0.01)
    storage.set("c", {"v": "c"}, None)
    assert storage.get("b") is None and storage.get("a") == {"v": "a"} and storage.count() == 2


def test_sqlite_key_value_keeps_the_cache_table_format(tmp_path):
    path = tmp_path / "cache.db"
    SQLiteStorage(path).set("k", {"text": "hi"}, None)
    db = sqlite3.connect(path)
    assert [row[1] for row in db.execute("PRAGMA table_info(cache)")] == ["key", "value", "expires_at", "used_at"]
    assert db.execute("SELECT value FROM cache WHERE key = 'k'").fetchone() == ('{"text": "hi"}',)


def test_redis_key_value_keeps_its_key_names(make, redis_url):
    import redis

    storage = make("redis", prefix="mlflow_lite:cache:test-names:")
    storage.set("k", {"text": "hi"}, None)
    assert redis.Redis.from_url(redis_url).get("mlflow_lite:cache:test-names:k") == b'{"text": "hi"}'
    storage.clear()


# -- ledger (the budget) --


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_ledger_reserves_in_every_bucket_or_none(make, kind):
    storage = make(kind)
    day, month = ("global", "day", 1.0), ("global", "month", 1.0)
    assert storage.ledger_reserve([day, month], "r1", 0.6, 60) is None
    index, spent, reserved, _ = storage.ledger_reserve([day, month], "r2", 0.6, 60)
    assert (index, spent, reserved) == (0, 0.0, pytest.approx(0.6))  # only a reservation in the way
    assert storage.ledger_settle("r1", [("global", "day"), ("global", "month")], 0.9) == [pytest.approx(0.9)] * 2
    index, spent, reserved, _ = storage.ledger_reserve([("global", "other", 1.0), month], "r3", 0.2, 60)
    assert (index, spent, reserved) == (1, pytest.approx(0.9), 0.0)  # the bucket spend alone fills is named
    assert storage.ledger_bucket("global", "other", 60) == (0.0, 0.0)  # refused: nothing reserved anywhere
    assert storage.ledger_bucket("global", "day", 60) == (pytest.approx(0.9), 0.0)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_ledger_async_twins(make, kind):
    storage = make(kind)
    bucket = [("global", "p", 1.0)]

    async def run():
        assert await storage.aledger_reserve(bucket, "r1", 0.5, 60) is None
        version = await storage.aledger_version()
        assert await storage.aledger_bucket("global", "p", 60) == (0.0, pytest.approx(0.5))
        await storage.aledger_renew(["r1"], [("global", "p")])
        assert await storage.aledger_settle("r1", [("global", "p")], 0.25) == [pytest.approx(0.25)]
        assert await storage.aledger_mark("global", "p", 0.5) is True
        assert await storage.aledger_mark("global", "p", 0.5) is False
        return version

    asyncio.run(run())
    assert storage.ledger_bucket("global", "p", 60) == (pytest.approx(0.25), 0.0)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_ledger_leases_lapse_unless_renewed(make, kind):
    storage = make(kind)
    bucket = [("global", "p", 1.0)]
    assert storage.ledger_reserve(bucket, "kept", 0.4, 0.5) is None
    assert storage.ledger_reserve(bucket, "lapsed", 0.4, 0.5) is None
    time.sleep(0.3)
    storage.ledger_renew(["kept"], [("global", "p")])
    time.sleep(0.3)
    assert storage.ledger_bucket("global", "p", 0.5) == (0.0, pytest.approx(0.4))
    assert storage.ledger_reserve(bucket, "new", 0.6, 0.5) is None  # the lapsed one no longer counts


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_ledger_version_changes_when_another_storage_settles(make, kind, tmp_path):
    storage = make(kind)
    other = SQLiteStorage(storage.path) if kind == "sqlite" else RedisStorage(storage.url, prefix=storage.prefix)
    storage.ledger_reserve([("global", "p", 1.0)], "r", 0.5, 60)
    before = storage.ledger_version()
    other.ledger_settle("r", [("global", "p")], 0.1)
    assert storage.ledger_version() != before


def test_sqlite_ledger_across_processes_never_overbooks(tmp_path):
    """Four processes race for ten $0.10 slots of $1.00 in one file: exactly ten are booked."""
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    SQLiteStorage(path).prepare("ledger")
    code = (
        "import sys, uuid\n"
        "from mlflow_lite_plugin.storage.sqlite import SQLiteStorage\n"
        "s = SQLiteStorage(sys.argv[1])\n"
        "print(sum(s.ledger_reserve([('race', 'p', 1.0)], uuid.uuid4().hex, 0.1, 600) is None for _ in range(10)))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    booked = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert sum(booked) == 10, booked
    assert SQLiteStorage(path).ledger_bucket("race", "p", 600) == (0.0, pytest.approx(1.0))


# -- schedule (the rate limit) --


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_schedule_books_slots_in_order_and_refuses_past_max_wait(make, kind):
    storage = make(kind)
    names = [f"requests:{uuid.uuid4().hex}"]
    assert storage.schedule_reserve(names, [1.0], None) == (True, pytest.approx(0.0, abs=0.05))
    ok, wait = storage.schedule_reserve(names, [1.0], None)
    assert ok and wait == pytest.approx(1.0, abs=0.1)  # the next slot, one second later
    ok, wait = asyncio.run(storage.aschedule_reserve(names, [1.0], 0.5))
    assert not ok and wait == pytest.approx(2.0, abs=0.1)  # not booked: the next is still 2 s away
    assert storage.schedule_start(names, [1.0]) == 0.0
    assert asyncio.run(storage.aschedule_start(names, [1.0])) == pytest.approx(1.0, abs=0.1)  # paid until then


def test_memory_schedule_forgets_and_reports_the_next_slot():
    clock = [100.0]
    storage = MemoryStorage(clock=lambda: clock[0])
    storage.schedule_reserve(["requests:*"], [6.0], None)
    assert storage.schedule_next_in("requests:*") == 6.0
    clock[0] += 2
    assert storage.schedule_next_in("requests:*") == 4.0
    storage.schedule_forget(["requests:*"])
    assert storage.schedule_next_in("requests:*") == 0.0


# -- logs (A/B tests) --


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_logs_append_and_list_per_test(make, kind):
    storage = make(kind)
    storage.append("ab_ratings", "t1", ("trace-a", 1.0, 1.0))
    asyncio.run(storage.aappend("ab_ratings", "t2", ("trace-b", 0.0, 2.0)))
    storage.append("ab_ratings", "t1", ("trace-c", 0.5, 3.0))
    assert storage.rows("ab_ratings", "t1") == [("trace-a", 1.0, 1.0), ("trace-c", 0.5, 3.0)]
    assert asyncio.run(storage.arows("ab_ratings", "t2")) == [("trace-b", 0.0, 2.0)]


def test_sqlite_log_rejects_a_row_of_the_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="ab_ratings has 3 values"):
        SQLiteStorage(tmp_path / "ab.db").append("ab_ratings", "t", ("trace", 1.0))


# -- locks (single flight) --


def test_redis_locks_belong_to_their_token(make):
    storage = make("redis")
    name = f"test:flight:{uuid.uuid4().hex}"
    assert storage.lock_acquire(name, "mine", 5) is True
    assert asyncio.run(storage.alock_acquire(name, "yours", 5)) is False
    assert storage.lock_release(name, "yours") is False and storage.lock_held(name) is True
    assert asyncio.run(storage.alock_release(name, "mine")) is True
    assert asyncio.run(storage.alock_held(name)) is False


def test_redis_async_twins_work_from_several_event_loops(make):
    """redis.asyncio connections belong to the loop that opened them: each loop gets its own."""
    storage = make("redis")
    for i in range(3):
        asyncio.run(storage.aset("k", {"i": i}, None))
        assert asyncio.run(storage.aget("k")) == {"i": i}


# -- outages: one typed error, the breaker --


def test_an_unreachable_redis_is_a_storage_error_that_is_also_redis_own():
    import redis

    with pytest.raises(StorageError, match=r"127\.0\.0\.1:1") as info:
        RedisStorage("redis://127.0.0.1:1/0", socket_timeout=0.5)
    assert isinstance(info.value, redis.ConnectionError) and info.value.backend == "redis"


def test_a_broken_sqlite_file_is_a_storage_error(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError) as info:
        SQLiteStorage(path).get("k")
    assert isinstance(info.value, sqlite3.DatabaseError) and info.value.backend == "sqlite"


def test_the_breaker_skips_a_failing_backend_sync_and_async(make, monkeypatch):
    storage = make("sqlite", breaker=BreakerSettings(failures=2, cooldown=3600))
    storage.prepare("kv")

    def broken():
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(storage, "_connect", broken)
    for _ in range(2):
        with pytest.raises(StorageError):
            storage.get("k")
    with pytest.raises(BackendSkipped):
        storage.get("k")
    with pytest.raises(BackendSkipped):
        asyncio.run(storage.aget("k"))
    assert storage.breaker.state == "open"


def test_the_async_breaker_counts_failures_and_answers():
    from mlflow_lite_plugin.storage import CircuitBreaker

    breaker = CircuitBreaker("test", (ConnectionError,), BreakerSettings(failures=1, cooldown=3600))

    async def down():
        raise ConnectionError("down")

    async def answers():
        raise ValueError("an answer")

    with pytest.raises(ValueError):
        asyncio.run(breaker.arun(answers))
    assert breaker.state == "closed"
    with pytest.raises(ConnectionError):
        asyncio.run(breaker.arun(down))
    with pytest.raises(BackendSkipped):
        asyncio.run(breaker.arun(answers))


# -- the opener --


def test_open_storage_parses_urls_and_paths(tmp_path, redis_url):
    import mlflow_lite_plugin as ml

    assert isinstance(open_storage(), MemoryStorage) and isinstance(open_storage("memory"), MemoryStorage)
    assert open_storage(tmp_path / "a.db").path == tmp_path / "a.db"
    assert open_storage(str(tmp_path / "b.db")).path == tmp_path / "b.db"
    assert open_storage(f"sqlite:///{tmp_path}/c.db").path == tmp_path / "c.db"
    redis_storage = open_storage(redis_url, prefix="x:")
    assert isinstance(redis_storage, RedisStorage) and redis_storage.prefix == "x:"
    for bad in ("ftp://host/x", "", 42, "sqlite://relative.db"):
        with pytest.raises(ml.ArgumentError) as info:
            open_storage(bad)
        assert info.value.argument == "storage"

"""The Client turns controls on through their settings: ``set_cache(...)`` is
``install(CacheSettings(...))``, and the README's one-liners keep their signatures."""

from __future__ import annotations

import inspect

import pytest

import mlflow_lite_plugin as ml
import mlflow_lite_plugin.client as client_module
from mlflow_lite_plugin.cache.stage import CacheSettings, SemanticCacheSettings
from mlflow_lite_plugin.controls.budget.settings import BudgetSettings
from mlflow_lite_plugin.controls.ratelimit import RateLimitSettings


def test_each_set_method_is_install_of_its_settings(tmp_path):
    by_method, by_settings = ml.Client(), ml.Client()
    budget = str(tmp_path / "budget.db")
    by_method.set_cache(ttl=60, max_temperature=0.5)
    by_method.set_semantic_cache(threshold=0.8, ttl=30)
    by_method.set_budget(daily_limit=3.0, scope="model", path=budget)
    by_method.set_rate_limit(60, model="gpt-4o", max_wait=1)
    for settings in (
        CacheSettings(ttl=60, max_temperature=0.5),
        SemanticCacheSettings(threshold=0.8, ttl=30),
        BudgetSettings(daily_limit=3.0, scope="model", path=budget),
        RateLimitSettings(60, model="gpt-4o", max_wait=1),
    ):
        by_settings.install(settings)
    assert by_method.pipeline.described() == by_settings.pipeline.described()
    assert [row["summary"] for row in by_method.pipeline.described()] == [
        "exact(memory, ttl=60, max_temperature=0.5)",
        "semantic(threshold=0.8, ttl=30)",
        "daily=3.0 USD, scope=model",
        "gpt-4o: 60 rpm",
    ]


@pytest.mark.parametrize(
    ("configure", "argument"),
    [
        (lambda c: c.set_cache(ttl=-1), "ttl"),
        (lambda c: c.set_cache(backend="disk"), "backend"),
        (lambda c: c.set_semantic_cache(threshold=2), "threshold"),
        (lambda c: c.set_budget(daily_limit=0), "daily_limit"),
        (lambda c: c.set_budget(daily_limit=1, on_unknown_price="ignore"), "on_unknown_price"),
        (lambda c: c.set_rate_limit(60, backend="redis"), "url"),
        (lambda c: c.set_rate_limit(max_wait=-1), "max_wait"),
    ],
)
def test_bad_settings_change_nothing(configure, argument):
    client = ml.Client()
    before = [stage.name for stage in client.pipeline.stages]
    with pytest.raises(ml.ArgumentError) as raised:
        configure(client)
    assert raised.value.argument == argument
    assert [stage.name for stage in client.pipeline.stages] == before


def test_the_one_liners_keep_the_methods_signatures_and_reach_the_default_client(default_client, tmp_path):
    for name in ("set_cache", "set_semantic_cache", "set_budget", "set_rate_limit", "budget_status", "cache_stats"):
        method = inspect.signature(getattr(ml.Client, name))
        assert inspect.signature(getattr(ml, name)).parameters == dict(list(method.parameters.items())[1:])
    ml.set_cache(enabled=True, ttl=3600)
    ml.set_budget(daily_limit=10.0, path=str(tmp_path / "budget.db"))
    assert default_client.pipeline.get("exact_cache").describe()["ttl"] == 3600
    assert ml.budget_status()["limit"] == 10.0 and ml.cache_stats()["hits"] == 0


def test_reading_the_default_client_never_creates_one(monkeypatch):
    monkeypatch.setattr(client_module, "_default", None)
    assert client_module.existing_default_client() is None
    created = ml.Client()
    ml.set_default_client(created)
    assert client_module.existing_default_client() is created

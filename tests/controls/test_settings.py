"""Each control is a plug-in: one frozen Settings class (its only validator), a stage built from it
by ``install``, and ``describe()``/``status()`` read by run tags, the UI and ``repr``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.cache.stage import CacheSettings, SemanticCacheSettings
from mlflow_lite_plugin.controls.budget.settings import BudgetSettings
from mlflow_lite_plugin.controls.ratelimit import RateLimitSettings
from mlflow_lite_plugin.controls.routing import RoutingSettings
from mlflow_lite_plugin.core.pipeline import STAGE_ORDER, Settings
from mlflow_lite_plugin.feedback.human import FeedbackLearningSettings, FewShotStage

ALL = [CacheSettings, SemanticCacheSettings, BudgetSettings, RateLimitSettings, FeedbackLearningSettings,
       RoutingSettings]


# -- settings: validated once, frozen, saved and rebuilt --


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: CacheSettings(ttl=0), "ttl"),
        (lambda: CacheSettings(max_entries=True), "max_entries"),
        (lambda: CacheSettings(max_temperature=-0.1), "max_temperature"),
        (lambda: SemanticCacheSettings(threshold=0), "threshold"),
        (lambda: SemanticCacheSettings(threshold=True), "threshold"),
        (lambda: SemanticCacheSettings(max_query_chars=0), "max_query_chars"),
        (lambda: SemanticCacheSettings(verify="yes"), "verify"),
        (lambda: SemanticCacheSettings(ttl=float("inf")), "ttl"),
        (lambda: BudgetSettings(), "daily_limit"),
        (lambda: BudgetSettings(daily_limit=5, timezone="Mars/Olympus"), "timezone"),
        (lambda: BudgetSettings(daily_limit=5, scope="user"), "scope"),
        (lambda: BudgetSettings(daily_limit=5, backend="postgres"), "backend"),
        (lambda: RateLimitSettings(requests_per_minute=-1), "requests_per_minute"),
        (lambda: RateLimitSettings(60, backend="redis"), "url"),
        (lambda: RateLimitSettings(60, model=""), "model"),
        (lambda: FeedbackLearningSettings(max_examples=0), "max_examples"),
        (lambda: FeedbackLearningSettings(max_examples=2.5), "max_examples"),
        (lambda: FeedbackLearningSettings(min_rating=float("nan")), "min_rating"),
        (lambda: FeedbackLearningSettings(similarity=1.5), "similarity"),
        (lambda: FeedbackLearningSettings(enabled="no"), "enabled"),
        (lambda: FeedbackLearningSettings(registry=1), "registry"),
        (lambda: RoutingSettings({}), "tiers"),
        (lambda: RoutingSettings({"auto": "gpt-4o"}), "tiers"),
        (lambda: RoutingSettings(thresholds=[0.5, 0.7]), "thresholds"),
        (lambda: RoutingSettings(thresholds=[True]), "thresholds"),
        (lambda: RoutingSettings(fallback="best"), "fallback"),
    ],
)
def test_bad_settings_name_the_argument(make, argument):
    with pytest.raises(ml.ArgumentError) as raised:
        make()
    assert raised.value.argument == argument


def test_a_misspelt_key_gets_a_suggestion():
    with pytest.raises(ml.ArgumentError, match=r"Did you mean 'max_temperature'\?") as raised:
        SemanticCacheSettings.from_dict({"max_temprature": 0})
    assert raised.value.argument == "semantic_cache.max_temprature"
    with pytest.raises(ml.ArgumentError, match="must be a dict of settings, got list") as raised:
        CacheSettings.from_dict([("ttl", 5)], argument="cache")
    assert raised.value.argument == "cache"


@pytest.mark.parametrize(
    "settings",
    [
        CacheSettings(),
        CacheSettings(ttl=3600, backend="sqlite", path="/tmp/c.db", max_temperature=0),
        SemanticCacheSettings(threshold=0.8, ttl=60, max_temperature=0, verify=False, max_query_chars=500),
        BudgetSettings(daily_limit=10.0, monthly_limit=200, scope="tag:user", max_wait=None),
        BudgetSettings(enabled=False),
        RateLimitSettings(60, tokens_per_minute=30_000, model="gpt-4o", max_wait=5),
        FeedbackLearningSettings(enabled=False, max_examples=2, min_rating=5, similarity=0.6, registry=False),
        RoutingSettings({"s": "gpt-4o-mini", "m": "gpt-4o", "l": "o1"}, thresholds=[0.2, 0.6], fallback=None),
    ],
)
def test_to_dict_holds_what_differs_from_the_defaults_and_rebuilds_the_same_settings(settings):
    saved = settings.to_dict()
    defaults = {f.name: f.default for f in dataclasses.fields(settings)}
    assert all(value != defaults[key] for key, value in saved.items())
    assert type(settings).from_dict(saved) == settings == type(settings)(**saved)


def test_settings_are_frozen_and_paths_are_text(tmp_path):
    settings = BudgetSettings(daily_limit=1.0, path=tmp_path / "b.db")
    assert settings.path == str(tmp_path / "b.db") and settings.to_dict()["path"] == str(tmp_path / "b.db")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.daily_limit = 2.0  # type: ignore[misc]
    assert all(issubclass(kind, Settings) and kind.__dataclass_params__.frozen for kind in ALL)


# -- install: on, replaced, off; stages read their order from the one table --


def test_every_built_in_stage_sits_where_the_order_table_says(client, tmp_path):
    client.set_cache()
    client.set_semantic_cache()
    client.set_budget(daily_limit=1.0, path=str(tmp_path / "budget.db"))
    client.set_rate_limit(60)
    client.set_feedback_learning(registry=False)
    stages = client.pipeline.stages
    assert [s.name for s in stages] == list(STAGE_ORDER)  # the table lists them in pipeline order
    assert all(stage.order == STAGE_ORDER[stage.name] for stage in stages)


def test_install_turns_a_control_on_replaces_it_and_turns_it_off(client, tmp_path):
    stage = client.install(CacheSettings(ttl=5))
    assert client.pipeline.get("exact_cache") is stage
    assert stage.describe() == {"kind": "exact", "backend": "memory", "ttl": 5}
    client.install(CacheSettings(ttl=9, max_temperature=0.5))
    assert client.pipeline.get("exact_cache").describe()["ttl"] == 9
    assert client.install(CacheSettings(enabled=False)) is None and client.pipeline.get("exact_cache") is None
    # set_budget is install(BudgetSettings(...)): the alerts of a replaced budget stay
    client.set_budget(daily_limit=1.0, path=str(tmp_path / "budget.db"))
    client.set_alert(0.5, callback=print)
    client.install(BudgetSettings(daily_limit=2.0, path=str(tmp_path / "budget.db")))
    assert client.pipeline.get("budget").describe() == {
        "daily_limit": 2.0, "scope": "global", "timezone": "UTC", "alerts": [0.5],
    }
    client.set_budget(enabled=False)
    assert client.pipeline.get("budget") is None


def test_rate_limits_add_up_per_model_and_the_last_one_removed_removes_the_stage(client):
    client.set_rate_limit(60)
    client.set_rate_limit(tokens_per_minute=30_000, model="gpt-4o", max_wait=2)
    stage = client.pipeline.get("rate_limit")
    assert stage.describe() == {
        "limits": [{"requests_per_minute": 60}, {"model": "gpt-4o", "tokens_per_minute": 30_000}],
        "max_wait": 2, "backend": "memory",
    }
    assert stage.summary() == "60 rpm; gpt-4o: 30000 tpm"
    assert set(stage.status()["next_slot_in_s"]) == {"60 requests/min (all models)", "30000 tokens/min (gpt-4o)"}
    with pytest.raises(ml.ArgumentError):
        client.set_rate_limit(-5)  # refused before anything changes
    assert client.pipeline.get("rate_limit").summary() == "60 rpm; gpt-4o: 30000 tpm"
    client.set_rate_limit(model="gpt-4o")
    client.set_rate_limit()
    assert client.pipeline.get("rate_limit") is None


def test_the_semantic_cache_owns_its_ttl(client):
    client.set_semantic_cache(ttl=60, threshold=0.8, max_temperature=0)
    stage = client.pipeline.get("semantic_cache")
    assert client.semantic_cache().ttl == 60
    assert stage.describe() == {"kind": "semantic", "threshold": 0.8, "ttl": 60, "max_temperature": 0}
    assert stage.summary() == "semantic(threshold=0.8, ttl=60, max_temperature=0)"
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    client.set_semantic_cache(cache=SemanticCache(ttl=5), ttl=60)  # a given cache's own settings apply
    assert client.pipeline.get("semantic_cache").describe()["ttl"] == 5


def test_built_in_status_is_the_controls_live_state(client, tmp_path):
    client.set_cache()
    client.set_budget(daily_limit=1.0, path=str(tmp_path / "budget.db"))
    exact, budget = client.pipeline.get("exact_cache"), client.pipeline.get("budget")
    assert exact.status() == {"hits": 0, "misses": 0, "hit_rate": 0.0, "cost_saved": 0.0}
    assert budget.status() == client.budget_status()
    assert repr(budget) == "BudgetStage(daily=1.0 USD, scope=global)"


# -- third-party stages go through the same hooks --


class Moderation(ml.Stage):
    name = "moderation"

    def describe(self):
        return {"blocklist": 3, "ratio": 0.25}


def test_a_third_party_stage_describes_itself_like_the_built_ins(client):
    plain = ml.Stage()
    assert plain.describe() == {} and plain.status() is None and repr(plain) == "Stage()"
    client.add_stage(Moderation())
    client.add_stage(plain)
    rows = client.pipeline.described()
    assert [row["name"] for row in rows] == ["moderation"]  # validation and metrics have nothing to say
    assert rows[0] == {
        "name": "moderation", "group": "moderation", "order": 500,
        "settings": {"blocklist": 3, "ratio": 0.25}, "summary": "blocklist=3, ratio=0.25", "status": None,
    }
    assert repr(Moderation()) == "Moderation(blocklist=3, ratio=0.25)"


def test_settings_no_stage_is_built_from_are_refused(client):
    @dataclasses.dataclass(frozen=True)
    class Orphan(Settings):
        stage = "orphan"

    with pytest.raises(ml.ArgumentError, match="no stage is built from Orphan"):
        client.install(Orphan())


def test_the_flavor_saves_each_controls_to_dict(tmp_path, stub):
    import yaml

    path = Path(tmp_path / "bot")
    ml.save_model(
        str(path), model="gpt-4o", prompt="Q: {q}", params={"api_base": stub.openai_base},
        cache={"ttl": 60, "backend": "memory"}, rate_limit={"requests_per_minute": 60, "max_wait": None},
        budget={"daily_limit": 2, "path": str(tmp_path / "b.db"), "max_wait": 30.0},
    )
    config = yaml.safe_load((path / "mlflow_lite.yaml").read_text())
    assert config["cache"] == CacheSettings(ttl=60).to_dict() == {"ttl": 60}
    assert config["rate_limit"] == {"requests_per_minute": 60}
    assert config["budget"] == {"daily_limit": 2, "path": str(tmp_path / "b.db")}


# -- feedback learning and routing: settings of their own --


def test_misspelt_feedback_learning_and_routing_keys_get_a_suggestion():
    with pytest.raises(ml.ArgumentError, match=r"Did you mean 'similarity'\?") as raised:
        FeedbackLearningSettings.from_dict({"similarty": 0.6})
    assert raised.value.argument == "few_shot.similarty"
    with pytest.raises(ml.ArgumentError, match=r"Did you mean 'thresholds'\?"):
        RoutingSettings.from_dict({"threshold": [0.5]}, argument="routing")


def test_set_feedback_learning_refuses_a_switch_that_is_not_a_bool():
    """Regression: ``enabled="no"`` was read as ``bool("no")`` and turned learning on."""
    client = ml.Client()
    with pytest.raises(ml.ArgumentError) as raised:
        client.set_feedback_learning(enabled="no", registry=False)
    assert raised.value.argument == "enabled"
    assert "few_shot" not in [stage.name for stage in client.pipeline.stages]


def test_feedback_learning_is_installed_and_stays_while_off(client):
    stage = client.install(FeedbackLearningSettings(max_examples=2, registry=False))
    assert isinstance(stage, FewShotStage) and client.pipeline.get("few_shot") is stage
    assert stage.describe() == {
        "enabled": True, "max_examples": 2, "min_rating": 4, "similarity": 0.5, "registry": False,
    }
    learner = client.set_feedback_learning(enabled=False, registry=False)  # the seed API is install(...)
    assert client.pipeline.get("few_shot") is stage and learner is stage.learner and not learner.enabled
    assert repr(stage) == "FewShotStage(enabled=False, max_examples=3, min_rating=4, similarity=0.5, registry=False)"
    row = next(row for row in client.pipeline.described() if row["name"] == "few_shot")
    assert row["settings"] == stage.describe() and row["group"] == "few_shot"
    with pytest.raises(ml.ArgumentError, match="similarity"):
        client.set_feedback_learning(similarity=2)
    assert stage.describe()["enabled"] is False  # refused before anything changed


def test_the_router_describes_itself_but_is_no_stage(client):
    client.set_routing({"cheap": "gpt-4o-mini", "mid": "gpt-4o", "best": "o1"}, fallback="best")
    router = client.router
    assert router.describe() == {
        "tiers": {"cheap": "gpt-4o-mini", "mid": "gpt-4o", "best": "o1"}, "thresholds": [0.35, 0.7], "fallback": "best",
    }
    with pytest.raises(ml.ArgumentError, match="'cheap', 'mid', 'best'; got 'fastest'") as raised:
        client.set_routing({"cheap": "gpt-4o-mini", "mid": "gpt-4o", "best": "o1"}, fallback="fastest")
    assert raised.value.argument == "fallback" and client.router is router
    assert "routing" not in [stage.name for stage in client.pipeline.stages]
    with pytest.raises(ml.ArgumentError, match="no stage is built from RoutingSettings"):
        client.install(RoutingSettings())

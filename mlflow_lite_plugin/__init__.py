"""mlflow-lite-plugin: production controls for LLM calls, traced to MLflow.

    import mlflow_lite_plugin as ml
    r = ml.query(model="gpt-4o", prompt="How do I reset my password?")
    r.text, r.usage, r.cost, r.latency, r.trace_id

Importing this package is fast: LiteLLM and MLflow are imported on first use.
"""

# First: the environment defaults (LiteLLM's offline price map) are set before anything else runs.
from mlflow_lite_plugin.core import environment  # noqa: F401, I001

from mlflow_lite_plugin.client import (
    Client,
    add_metric,
    add_to_cache,
    list_metrics,
    query_with_template,
    export_dataset,
    record_feedback,
    remove_metric,
    set_feedback_learning,
    set_routing,
    smart_query,
    stream_validated,
    aquery,
    async_batch,
    batch,
    budget_status,
    cache_stats,
    clear_cache,
    count_tokens,
    estimate_cost,
    flush_traces,
    get_default_client,
    query,
    set_alert,
    set_budget,
    set_cache,
    set_default_client,
    set_experiment,
    set_fallbacks,
    set_model_alias,
    set_model_price,
    set_rate_limit,
    set_semantic_cache,
    set_tracing,
    semantic_cache,
    stream,
)
from mlflow_lite_plugin.core.errors import (
    ArgumentError,
    MlflowLiteError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimitError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RequestEncodingError,
    ValidationError,
)
from mlflow_lite_plugin.core.deadline import DeadlineExceededError
from mlflow_lite_plugin.controls.metrics import MetricResult
from mlflow_lite_plugin.core.pipeline import Call, Stage, StopStream
from mlflow_lite_plugin.controls.budget.stage import BudgetExceededError
from mlflow_lite_plugin.controls.ratelimit import RateLimitExceededError
from mlflow_lite_plugin.core.response import Response, Stream

from mlflow_lite_plugin.version import __version__ as __version__

# Loaded on first use (PEP 562): the flavor and registry import mlflow (~1 s), and the rest is not
# needed to answer a first query, whose cold start is a measured target.
_LAZY = {
    **dict.fromkeys(("save_model", "log_model", "load_model"), "flavor"),
    **dict.fromkeys(("promote", "PromotionRefusedError"), "flavor.promotion"),
    **dict.fromkeys(("ABTest", "ABTestError", "ab_test"), "workflows.abtest"),
    **dict.fromkeys(("Chain", "ChainResult", "ChainStepError", "Step", "StepResult"), "workflows.chains"),
    **dict.fromkeys(("Router", "RoutingDecision", "estimate_complexity"), "controls.routing"),
    **dict.fromkeys(("list_templates", "register_template"), "prompts.templates"),
    **dict.fromkeys(("ValidationResult",), "controls.validation.rules"),
    **dict.fromkeys(
        ("ProposalStateError", "SelfApprovalError", "UnverifiedApprovalError", "approve_prompt", "pending_prompts",
         "promote_prompt", "propose_prompt", "reject_prompt", "verify_approval"),
        "prompts.approvals",
    ),
    **dict.fromkeys(("PermissionDeniedError",), "prompts.auth"),
    **dict.fromkeys(("ApprovalKeyError",), "prompts.signing"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ABTest",
    "ABTestError",
    "ab_test",
    "ApprovalKeyError",
    "PermissionDeniedError",
    "ProposalStateError",
    "SelfApprovalError",
    "UnverifiedApprovalError",
    "approve_prompt",
    "pending_prompts",
    "promote_prompt",
    "propose_prompt",
    "reject_prompt",
    "verify_approval",
    "Chain",
    "ChainResult",
    "ChainStepError",
    "MetricResult",
    "Router",
    "RoutingDecision",
    "Step",
    "StepResult",
    "estimate_complexity",
    "export_dataset",
    "record_feedback",
    "set_feedback_learning",
    "set_routing",
    "smart_query",
    "PromotionRefusedError",
    "ValidationError",
    "ValidationResult",
    "add_metric",
    "add_to_cache",
    "load_model",
    "log_model",
    "promote",
    "save_model",
    "list_metrics",
    "list_templates",
    "query_with_template",
    "register_template",
    "remove_metric",
    "stream_validated",
    "ArgumentError",
    "BudgetExceededError",
    "Call",
    "Client",
    "MlflowLiteError",
    "ProviderAuthError",
    "ProviderBadRequestError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRateLimitError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitExceededError",
    "RequestEncodingError",
    "DeadlineExceededError",
    "Response",
    "Stage",
    "StopStream",
    "Stream",
    "aquery",
    "async_batch",
    "batch",
    "budget_status",
    "cache_stats",
    "clear_cache",
    "count_tokens",
    "estimate_cost",
    "flush_traces",
    "get_default_client",
    "query",
    "set_alert",
    "set_budget",
    "set_cache",
    "set_default_client",
    "set_experiment",
    "set_fallbacks",
    "set_model_alias",
    "set_model_price",
    "set_rate_limit",
    "set_semantic_cache",
    "semantic_cache",
    "set_tracing",
    "stream",
]

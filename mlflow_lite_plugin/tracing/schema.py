"""Every name the package writes into MLflow and reads back: span attributes, trace tags, run
tags, model-version and prompt tags, assessment names, and the MLflow names we fill in.

A name is written in one module and read in another (a stage sets ``COST_USD`` on the root span;
the dashboard, the dataset export and the A/B tests read it), so it is spelled once, here.
Changing a value changes what old traces, runs and registry entries are read with: don't.
Nothing is imported here, so every layer may use it.
"""

from __future__ import annotations

PREFIX = "mlflow_lite."

# -- span names and span types (MLflow's, as strings so nothing imports mlflow for them) --

QUERY_SPAN = PREFIX + "query"  # the root span of a call (ml.query, ml.batch items, chain steps)
STREAM_SPAN = PREFIX + "stream"  # the root span of a streamed call
ROOT_SPANS = (QUERY_SPAN, STREAM_SPAN)
CHAT_MODEL = "CHAT_MODEL"
LLM = "LLM"
CHAIN = "CHAIN"


def root_span_name(kind: str) -> str:
    """The root span name of a call of ``kind`` ("query" or "stream")."""
    return PREFIX + kind


# -- MLflow's own span attributes (mlflow.tracing.constant.SpanAttributeKey) and trace tags:
#    the MLflow UI aggregates token usage and cost per trace from these --

CHAT_USAGE = "mlflow.chat.tokenUsage"
LLM_COST = "mlflow.llm.cost"
LLM_MODEL = "mlflow.llm.model"
LLM_PROVIDER = "mlflow.llm.provider"
LINKED_PROMPTS = "mlflow.linkedPrompts"  # trace tag: the registry prompt versions a call used

# -- the root span of a call, and its trace tags --

KIND = PREFIX + "kind"  # "query", "stream", "chain", "chain_step"
REQUESTED_MODEL = PREFIX + "requested_model"
MODEL = PREFIX + "model"  # the model that answered (span); the model asked for (trace tag)
PROVIDER = PREFIX + "provider"
NAMESPACE = PREFIX + "namespace"  # a call with namespace=: scopes its cache and its feedback
PROMPT_TOKENS = PREFIX + "prompt_tokens"
COMPLETION_TOKENS = PREFIX + "completion_tokens"
TOTAL_TOKENS = PREFIX + "total_tokens"
COST_USD = PREFIX + "cost_usd"  # what the call was billed, failed attempts included
LATENCY_S = PREFIX + "latency_s"
TIME_TO_FIRST_TOKEN_S = PREFIX + "time_to_first_token_s"
CACHED = PREFIX + "cached"  # "exact", "semantic" or "none"
STOPPED_EARLY = PREFIX + "stopped_early"
ERROR = PREFIX + "error"  # "<type>: <message>", scrubbed
NESTED_TAGS = PREFIX + "trace_tags"  # a call nested under the caller's span keeps its trace tags here

# -- one provider attempt (an LLM span) --

ATTEMPT = PREFIX + "attempt"
RETRY = PREFIX + "retry"
REASK = PREFIX + "reask"
STATUS_CODE = PREFIX + "status_code"
TRANSIENT = PREFIX + "transient"
COST_KNOWN = PREFIX + "cost_known"

# -- controls --

COST_SAVED_USD = PREFIX + "cost_saved_usd"  # a cache hit: what the provider would have billed
CACHE_BACKEND_SKIPPED = PREFIX + "cache.backend_skipped"
CACHE_SEMANTIC_SKIPPED = PREFIX + "cache.semantic_skipped"
RATE_LIMIT_WAIT_S = PREFIX + "rate_limit_wait_s"
METRIC_PREFIX = PREFIX + "metric."  # + the metric's name
BUDGET_PREFIX = PREFIX + "budget."
BUDGET_SCOPE = BUDGET_PREFIX + "scope"
BUDGET_RESERVED_USD = BUDGET_PREFIX + "reserved_usd"
BUDGET_WAIT_S = BUDGET_PREFIX + "wait_s"
BUDGET_REFUSED = BUDGET_PREFIX + "refused"
BUDGET_CHARGED_USD = BUDGET_PREFIX + "charged_usd"
BUDGET_ALERT_FIRED = BUDGET_PREFIX + "alert_fired"
VALIDATION_PREFIX = PREFIX + "validation."
VALIDATION_PASSED = VALIDATION_PREFIX + "passed"
VALIDATION_ERRORS = VALIDATION_PREFIX + "errors"
VALIDATION_ATTEMPTS = VALIDATION_PREFIX + "attempts"
VALIDATION_RULES = VALIDATION_PREFIX + "rules"
VALIDATION_STOPPED_AT_CHAR = VALIDATION_PREFIX + "stopped_at_char"
VALIDATION_STOP_RULE = VALIDATION_PREFIX + "stop_rule"
VALIDATION_STOP_PATH = VALIDATION_PREFIX + "stop_path"
ROUTE_TIER = PREFIX + "route_tier"
ROUTE_MODEL = PREFIX + "route_model"
ROUTE_SCORE = PREFIX + "route_score"
ROUTE_LEVEL = PREFIX + "route_level"
ROUTE_REASONS = PREFIX + "route_reasons"
ROUTE_UPGRADED_FROM = PREFIX + "route_upgraded_from"
ROUTE_UPGRADE_REASON = PREFIX + "route_upgrade_reason"


def metric_attribute(name: str) -> str:
    return METRIC_PREFIX + name


def budget_spent_attribute(period: str) -> str:
    """The spend so far of a budget period ("daily", "monthly"...), on the call's root span."""
    return f"{BUDGET_PREFIX}{period}_spent_usd"


def budget_limit_attribute(period: str) -> str:
    return f"{BUDGET_PREFIX}{period}_limit_usd"


# -- prompt templates (span attributes and trace tags of a template call) --

TEMPLATE = PREFIX + "template"  # the template's name: also scopes few-shot examples
TEMPLATE_VERSION = PREFIX + "template_version"
TEMPLATE_SOURCE = PREFIX + "template_source"
TEMPLATE_URI = PREFIX + "template_uri"

# -- few-shot examples from feedback --

FEW_SHOT_EXAMPLES = PREFIX + "few_shot_examples"
FEW_SHOT_TRACE_IDS = PREFIX + "few_shot_trace_ids"
FEW_SHOT_PROMPT = PREFIX + "few_shot_prompt"

# -- chains (their spans, and the chain trace's tags) --

CHAIN_NAME = PREFIX + "chain"  # trace tag
CHAIN_STEPS = PREFIX + "chain.steps"
CHAIN_FAILED_STEP = PREFIX + "chain.failed_step"
STEP_INDEX = PREFIX + "step.index"
STEP_MODEL = PREFIX + "step.model"
STEP_TEMPLATE = PREFIX + "step.template"

# -- assessments (MLflow feedback and expectations on a trace) --

RATING = "rating"  # HUMAN feedback
CORRECTION = "expected_response"  # MLflow's own name for the expected answer
VALIDATION = "validation"  # CODE feedback of the validation stage
HUMAN = "HUMAN"  # source type of a person's assessment
CODE_SOURCE = "mlflow_lite"  # source id of our CODE assessments
VALIDATION_SOURCE = PREFIX + "validation"

# -- run tags (the run-context plug-in, A/B tests) --

RUN_VERSION = PREFIX + "version"
RUN_DEFAULT_MODEL = PREFIX + "default_model"
AB_TEST = PREFIX + "ab_test"
AB_TEST_STATUS = AB_TEST + ".status"
AB_TEST_WINNER = AB_TEST + ".winner"


def run_tag(group: str) -> str:
    """The run tag summarising a control ("cache", "budget", "rate_limit", "metrics"...)."""
    return PREFIX + group


# -- model-version tags (registry aliases moved by promotion and A/B tests) --


def ab_test_alias_tag(alias: str) -> str:
    """The version tag recording why an A/B test moved ``alias`` to it."""
    return f"{AB_TEST}.{alias}"


def promotion_tag(alias: str) -> str:
    """The version tag recording the promotion that moved ``alias`` to it."""
    return f"{PREFIX}promotion.{alias}"


# -- Prompt Registry tags. No dots: Unity Catalog tags forbid them. --

TAG_PREFIX = "mlflow_lite_"
VALIDATE_TAG = TAG_PREFIX + "validate"  # a template version's default validation rules (JSON)
STATUS_TAG = TAG_PREFIX + "status"
PROPOSED_BY_TAG = TAG_PREFIX + "proposed_by"
PROPOSED_AT_TAG = TAG_PREFIX + "proposed_at"
APPROVED_BY_TAG = TAG_PREFIX + "approved_by"
APPROVED_AT_TAG = TAG_PREFIX + "approved_at"
APPROVED_ALIAS_TAG = TAG_PREFIX + "approved_alias"
APPROVAL_COMMENT_TAG = TAG_PREFIX + "approval_comment"
PREVIOUS_VERSION_TAG = TAG_PREFIX + "previous_version"
REJECTED_BY_TAG = TAG_PREFIX + "rejected_by"
REJECTED_AT_TAG = TAG_PREFIX + "rejected_at"
REJECTION_REASON_TAG = TAG_PREFIX + "rejection_reason"
APPROVAL_CHECKED_TAG = TAG_PREFIX + "approval_checked"  # "true" when an auth server vouched for the approver
APPROVED_CONTENT_TAG = TAG_PREFIX + "approved_content"  # SHA-256 of the template and rules approved
APPROVAL_SIGNATURE_TAG = TAG_PREFIX + "approval_signature"
# The few-shot examples of one scope are the chat prompt EXAMPLES_PREFIX + <scope key>, tagged:
EXAMPLES_PREFIX = TAG_PREFIX + "examples_"
EXAMPLES_SCOPE_TAG = TAG_PREFIX + "scope"
EXAMPLES_SCOPE_KEY_TAG = TAG_PREFIX + "scope_key"
EXAMPLES_COUNT_TAG = TAG_PREFIX + "examples"
EXAMPLES_SOURCES_TAG = TAG_PREFIX + "sources"
EXAMPLES_TEMPLATE_TAG = TAG_PREFIX + "template"

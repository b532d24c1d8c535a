"""Every name the package writes into MLflow (span attributes, trace, run, version and prompt tags,
assessment names) is spelled once, in ``tracing/schema.py``; the rest of the package uses its
constants, so a writer and its readers cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.tracing import schema

from tests.helpers import get_trace

PACKAGE_DIR = Path(ml.__file__).parent
SCHEMA = PACKAGE_DIR / "tracing" / "schema.py"
# ``mlflow_lite.`` anywhere in a string, or a string starting ``mlflow_lite_`` (a registry tag; not the package)
NAME = re.compile(r"mlflow_lite\.|^mlflow_lite_(?!plugin)")
# Strings of that shape that name no MLflow attribute or tag: files, a context variable, a dataset.
NOT_NAMES = {
    "mlflow_lite.yaml",  # the flavor's settings file (a saved format)
    "mlflow_lite_cache.db",  # the exact cache's default SQLite file
    "mlflow_lite_deadline",  # a context variable
    "mlflow_lite_eval_results", "mlflow_lite_eval_results.json",  # the evaluator's table artifact
    "mlflow_lite_",  # the default name of an exported dataset (f"mlflow_lite_{format}")
}
# MLflow's own names that we fill in: spelled in the schema too.
MLFLOW_NAMES = {schema.CHAT_USAGE, schema.LLM_COST, schema.LLM_MODEL, schema.LLM_PROVIDER, schema.LINKED_PROMPTS}


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes (they may quote a name: ``mlflow_lite.cost_usd`` is ...)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def literals_outside_the_schema(root: Path = PACKAGE_DIR) -> list[str]:
    found: list[tuple[str, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        if path == SCHEMA:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
                continue
            if (NAME.search(node.value) and node.value not in NOT_NAMES) or node.value in MLFLOW_NAMES:
                found.append((str(path.relative_to(root)), node.lineno, node.value))
    return [f"{path}:{line}: {value!r}" for path, line, value in sorted(found)]


def test_no_module_outside_the_schema_spells_a_name():
    assert literals_outside_the_schema() == []


def test_the_check_finds_a_name_in_a_plain_string_and_an_f_string(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text('"""Docs may say ``mlflow_lite.cost_usd``."""\n'
                      'A = {"mlflow_lite.cost_usd": 1}\nB = f"mlflow_lite.{kind}"\nC = "mlflow_lite_status"\n'
                      'D = "mlflow.llm.cost"\nE = "mlflow_lite.yaml"\n')
    found = literals_outside_the_schema(tmp_path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "'mlflow_lite.cost_usd'", "'mlflow_lite.'", "'mlflow_lite_status'", "'mlflow.llm.cost'"
    ]


def test_names_are_unique_and_shaped_for_where_they_go():
    names = {key: value for key, value in vars(schema).items() if key.isupper() and isinstance(value, str)}
    by_value: dict[str, list[str]] = {}
    for key, value in names.items():
        by_value.setdefault(value, []).append(key)
    assert {v: keys for v, keys in by_value.items() if len(keys) > 1} == {}
    for key, value in names.items():
        if key.endswith("_TAG") or key in ("TAG_PREFIX", "EXAMPLES_PREFIX"):
            # Prompt Registry tags: Unity Catalog forbids dots in tag keys.
            assert value.startswith(schema.TAG_PREFIX) and "." not in value, key
        elif value.startswith("mlflow") and value != schema.CODE_SOURCE:
            assert value.startswith(schema.PREFIX) or value in MLFLOW_NAMES, key


def test_a_traced_template_call_carries_the_schema_names(stub, openai_kw):
    """The writers use the schema: a template call's root span and trace tags hold these names
    (with their historical values, which old traces were written with)."""
    client = ml.Client()
    r = client.query_with_template("summarize", input="The cat sat on the mat.", model="gpt-4o", **openai_kw)
    trace = get_trace(r.trace_id)
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert root.name == schema.QUERY_SPAN == "mlflow_lite.query"
    assert root.attributes[schema.TEMPLATE] == trace.info.tags[schema.TEMPLATE] == "summarize"
    assert root.attributes[schema.KIND] == "query"
    assert root.attributes[schema.COST_USD] == r.cost and schema.COST_USD == "mlflow_lite.cost_usd"
    assert trace.info.tags[schema.MODEL] == "gpt-4o" and schema.MODEL == "mlflow_lite.model"
    (attempt,) = [s for s in trace.data.spans if s.parent_id == root.span_id]
    assert attempt.attributes[schema.ATTEMPT] == 1 and attempt.attributes[schema.LLM_MODEL] == "openai/gpt-4o"

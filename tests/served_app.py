"""The support-bot app that the serving and Spark tests package as an mlflow_lite model."""

from __future__ import annotations

import pandas as pd

KNOWN = "How do I reset my password?"
KNOWN_ANSWER = "Use the Forgot password link."
PARAPHRASE = "What's the process to reset my password?"
PROMPT = "Answer the customer: {question}"
SYSTEM = "You are helpful."


def model_settings(api_base: str) -> dict:
    """One prompt variable, a system prompt, the stub as provider, a warm cache."""
    return dict(
        model="gpt-4o",
        prompt=PROMPT,
        system=SYSTEM,
        params={"api_base": api_base},
        cache={"ttl": 3600},
        cache_data=pd.DataFrame({"question": [KNOWN], "answer": [KNOWN_ANSWER]}),
    )


def stub_answer(question: str) -> str:
    """What the stub server answers to a question that misses the cache."""
    return f"Stub answer from gpt-4o: {PROMPT.format(question=question)}"

"""The offline model ``lite/echo``: deterministic, streams, reports tokens, costs $0.

It is a LiteLLM custom provider, so it runs through the same ``litellm.completion`` code path as
real models. It only answers model names under ``lite/``; real names always go to real providers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from mlflow_lite_plugin.core.messages import last_user_text

OFFLINE_MODELS = ("lite/echo",)


def echo_answer(messages: list[dict[str, Any]]) -> str:
    return f"Echo: {last_user_text(messages).strip()}"


def register_offline_provider(litellm: Any) -> None:
    """Register the ``lite`` provider with LiteLLM (its $0 price lives in ``pricing``)."""
    if any(item.get("provider") == "lite" for item in litellm.custom_provider_map):
        return
    from litellm import CustomLLM
    from litellm.llms.custom_llm import CustomLLMError

    # LiteLLM calls the handler with keywords; each method names the few it uses (the base class
    # spells every one), hence the override ignores.
    class OfflineLLM(CustomLLM):
        def _answer(self, model: str, messages: list[dict[str, Any]]) -> tuple[str, int, int]:
            if f"lite/{model}" not in OFFLINE_MODELS and model not in OFFLINE_MODELS:
                raise CustomLLMError(
                    status_code=404, message=f"unknown offline model {model!r}; offline models: {OFFLINE_MODELS}"
                )
            text = echo_answer(messages)
            prompt_tokens = litellm.token_counter(model="gpt-4o", messages=messages)
            return text, prompt_tokens, litellm.token_counter(model="gpt-4o", text=text)

        def completion(self, model: str, messages: list, model_response: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            text, prompt_tokens, completion_tokens = self._answer(model, messages)
            model_response.choices[0].message.content = text
            model_response.choices[0].finish_reason = "stop"
            model_response.model = f"lite/{model}"
            model_response.usage = litellm.Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            return model_response

        async def acompletion(self, model: str, messages: list, model_response: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return self.completion(model, messages, model_response, **kwargs)

        def streaming(self, model: str, messages: list, **kwargs: Any) -> Iterator[dict[str, Any]]:  # type: ignore[override]
            text, prompt_tokens, completion_tokens = self._answer(model, messages)
            words = text.split(" ")
            for i, word in enumerate(words):
                last = i == len(words) - 1
                yield {
                    "text": word if last else word + " ",
                    "is_finished": last,
                    "finish_reason": "stop" if last else "",
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                    if last
                    else None,
                    "index": 0,
                    "tool_use": None,
                }

        async def astreaming(self, model: str, messages: list, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
            for chunk in self.streaming(model, messages, **kwargs):
                yield chunk

    litellm.custom_provider_map.append({"provider": "lite", "custom_handler": OfflineLLM()})
    from litellm.utils import custom_llm_setup

    custom_llm_setup()

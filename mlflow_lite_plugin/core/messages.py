"""Chat messages as data: the text of a message's content and the last user message.

Below the request, the offline model and every reader of traced messages (routing, feedback,
datasets), so each of them reads "the question" the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return "" if content is None else str(content)


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last user message ("" when there is none): what a call asks."""
    return next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")

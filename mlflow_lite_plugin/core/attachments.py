"""Images in a query: ``ml.query(model="gpt-4o", prompt="Describe this image", image="cat.jpg")``.

``image=`` takes a path, a URL (``https://...`` or ``data:image/...``), raw bytes, or a list of
them. They become OpenAI-format ``image_url`` content parts of the last user message, which
LiteLLM translates to each provider's own format (Anthropic ``image`` blocks, Gemini parts...).
Files and bytes are sent inline (base64); URLs are passed as they are, never fetched by us.

Tokens: an image is counted with the provider's published formula from its pixel size (read from
the file header, no image library): OpenAI ``85 + 170 * tiles of 512 px`` after scaling to fit
2048 px and 768 px on the short side; Anthropic ``width * height / 750`` after scaling to 1568 px
on the long side. A URL, whose size we do not fetch, counts as the largest image either formula
allows, so budgets stay an upper bound.

Traces keep a reference (name, media type, size, sha256), never the base64 data.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.core.uris import uri_scheme

MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_BYTES = 20 * 1024 * 1024  # the largest image the major providers accept inline
# The most tokens one image can cost (OpenAI high detail at 768x2048: 8 tiles; Anthropic's cap).
MAX_IMAGE_TOKENS = 1600
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+);base64,(.*)$", re.S | re.I)  # schemes and types ignore case
_URL_SCHEMES = frozenset({"http", "https", "data"})


@dataclass(frozen=True)
class Image:
    """One image of a request: where it came from, and what a trace records of it."""

    name: str
    media_type: str
    size: int  # bytes (0 for a URL)
    sha256: str
    url: str  # what the provider gets: a data: URL or the caller's URL
    width: int | None = None
    height: int | None = None

    def part(self) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": self.url}}

    def reference(self) -> str:
        if self.url.startswith("data:"):
            dims = f", {self.width}x{self.height}" if self.width else ""
            return f"[image {self.name}: {self.media_type}, {self.size} bytes{dims}, sha256:{self.sha256[:16]}]"
        return self.url


def load_images(image: Any) -> list[Image]:
    """``image=`` as a list of :class:`Image`; raises ArgumentError naming a bad one."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ArgumentError("image", "is an empty list")
    return [_load(item, i) for i, item in enumerate(items)]


def _load(item: Any, index: int) -> Image:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(item), f"image {index}")
    if isinstance(item, Path) or (isinstance(item, str) and uri_scheme(item, "image") not in _URL_SCHEMES):
        path = Path(item).expanduser()
        if not path.is_file():
            raise ArgumentError("image", f"no such file: {str(path)!r}")
        return _from_bytes(path.read_bytes(), path.name)
    if isinstance(item, str) and uri_scheme(item, "image") == "data":
        match = _DATA_URL.match(item)
        if not match:
            raise ArgumentError("image", "a data: URL must be data:image/<type>;base64,<data>")
        try:
            data = base64.b64decode(match.group(2), validate=True)
        except ValueError:
            raise ArgumentError("image", "the data: URL is not valid base64") from None
        return _from_bytes(data, f"image {index}")
    if isinstance(item, str):
        return Image(item.rsplit("/", 1)[-1] or item, "image/*", 0, hashlib.sha256(item.encode()).hexdigest(), item)
    raise ArgumentError("image", f"must be a path, URL, bytes or a list of them, got {type(item).__name__}")


def _from_bytes(data: bytes, name: str) -> Image:
    media_type = sniff(data)
    if media_type is None:
        raise ArgumentError(
            "image", f"{name} is not a supported image type (supported: {', '.join(MEDIA_TYPES)})"
        )
    if len(data) > MAX_BYTES:
        raise ArgumentError("image", f"{name} is {len(data)} bytes; providers accept at most {MAX_BYTES}")
    width, height = dimensions(data, media_type)
    url = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
    return Image(name, media_type, len(data), hashlib.sha256(data).hexdigest(), url, width, height)


def sniff(data: bytes) -> str | None:
    """The media type from the file's magic bytes (the extension can lie)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def dimensions(data: bytes, media_type: str) -> tuple[int | None, int | None]:
    """Pixel width and height from the image header; (None, None) if it cannot be read."""
    try:
        if media_type == "image/png":
            return struct.unpack(">II", data[16:24])
        if media_type == "image/gif":
            return struct.unpack("<HH", data[6:10])
        if media_type == "image/jpeg":
            return _jpeg_dimensions(data)
        if media_type == "image/webp":
            return _webp_dimensions(data)
    except struct.error:
        pass
    return None, None


def _jpeg_dimensions(data: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None, None


def _webp_dimensions(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None, None


def image_tokens(width: int | None, height: int | None, provider: str | None) -> int:
    """Input tokens of one image by the provider's formula; the maximum when the size is unknown."""
    if not width or not height:
        return MAX_IMAGE_TOKENS
    if provider == "anthropic":
        scale = min(1.0, 1568 / max(width, height))
        return min(MAX_IMAGE_TOKENS, math.ceil(width * scale * height * scale / 750))
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    tiles = math.ceil(w * scale / 512) * math.ceil(h * scale / 512)
    return 85 + 170 * tiles


def attach(messages: list[dict[str, Any]], images: Sequence[Image]) -> list[dict[str, Any]]:
    """The messages with ``images`` added as content parts of the last user message."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        raise ArgumentError("image", "needs a user message to attach to")
    content = messages[last].get("content")
    parts = list(content) if isinstance(content, list) else [{"type": "text", "text": content or ""}]
    updated = list(messages)
    updated[last] = {**messages[last], "content": parts + [image.part() for image in images]}
    return updated


def split_images(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages with image parts removed, and the URLs of those images (for token counting)."""
    text_only, urls = [], []
    for message in messages:
        content = message.get("content")
        if has_images(content):
            urls += [_url(p) for p in content if _is_image(p)]
            message = {**message, "content": [p for p in content if not _is_image(p)]}
        text_only.append(message)
    return text_only, urls


def url_tokens(url: str, provider: str | None) -> int:
    """Tokens of an image given by URL (inline data: URLs are measured, others are not fetched)."""
    match = _DATA_URL.match(url)
    if match:
        try:
            data = base64.b64decode(match.group(2))
        except ValueError:
            return MAX_IMAGE_TOKENS
        media_type = sniff(data)
        if media_type:
            return image_tokens(*dimensions(data, media_type), provider)
    return MAX_IMAGE_TOKENS


def has_images(content: Any) -> TypeGuard[list[Any]]:
    return isinstance(content, list) and any(_is_image(p) for p in content)


def redact(messages: Sequence[dict[str, Any]], images: Sequence[Image]) -> list[dict[str, Any]]:
    """Messages for a trace: inline image data replaced by a reference to the image."""
    by_url = {image.url: image for image in images}
    redacted = []
    for message in messages:
        content = message.get("content")
        if has_images(content):
            content = [_reference(p, by_url) if _is_image(p) else p for p in content]
            message = {**message, "content": content}
        redacted.append(message)
    return redacted


def _reference(part: dict[str, Any], by_url: dict[str, Image]) -> dict[str, Any]:
    url = _url(part)
    image = by_url.get(url)
    if image is None and _is_data_url(url):  # inline data that did not come through image=
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        return {"type": "image_url", "image_url": {"url": f"[inline image, {len(url)} chars, sha256:{digest}]"}}
    return {"type": "image_url", "image_url": {"url": image.reference() if image else url}}


def _is_data_url(url: str) -> bool:
    try:
        return uri_scheme(url) == "data"
    except ArgumentError:  # a malformed URL is not inline data, and redacting a trace never fails
        return False


def _url(part: dict[str, Any]) -> str:
    image_url = part["image_url"]
    return str(image_url.get("url", "") if isinstance(image_url, dict) else image_url)


def _is_image(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "image_url" and "image_url" in part

"""image= on queries: paths, bytes, URLs and lists; provider wire formats; image tokens in cost;
traces keep references, never base64."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.core.attachments import image_tokens, load_images
from mlflow_lite_plugin.testing.stub_server import IMAGE_TOKENS, count_words

from tests.helpers import get_trace


def png(width: int, height: int) -> bytes:
    """A real (tiny-content) PNG of the given size, written by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture
def cat(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(png(1024, 1024))
    return path


def test_path_is_sent_inline_in_openai_format(client, stub, openai_kw, cat):
    r = client.query(model="gpt-4o", prompt="Describe this image", image=str(cat), **openai_kw)
    content = stub.requests[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "Describe this image"}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(cat.read_bytes()).decode()
    # the provider charged the image: usage and cost include it
    assert r.usage["prompt_tokens"] == count_words("Describe this image") + IMAGE_TOKENS
    text_only = client.query(model="gpt-4o", prompt="Describe this image", **openai_kw)
    assert r.cost > text_only.cost


def test_anthropic_gets_its_own_image_blocks(client, stub, anthropic_kw, cat):
    client.query(model="claude-3-5-sonnet", prompt="What is it?", image=cat.read_bytes(), **anthropic_kw)
    content = stub.requests[-1].body["messages"][-1]["content"]
    image = next(p for p in content if p["type"] == "image")
    assert image["source"]["type"] == "base64" and image["source"]["media_type"] == "image/png"
    assert base64.b64decode(image["source"]["data"]) == cat.read_bytes()


def test_list_and_url_images(client, stub, openai_kw, cat, tmp_path):
    other = tmp_path / "dog.gif"
    other.write_bytes(b"GIF89a" + struct.pack("<HH", 64, 32) + b"\x00" * 20)
    url = "https://example.com/images/bird.jpg"
    client.query(model="gpt-4o", prompt="Compare", image=[cat, other, url], **openai_kw)
    parts = stub.requests[-1].body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url", "image_url"]
    assert parts[2]["image_url"]["url"].startswith("data:image/gif;base64,")
    assert parts[3]["image_url"]["url"] == url  # passed through, never fetched by us


def test_trace_stores_a_reference_not_the_data(client, stub, openai_kw, cat):
    r = client.query(model="gpt-4o", prompt="Describe this image", image=cat, **openai_kw)
    trace = get_trace(r.trace_id)
    dumped = json.dumps([s.inputs for s in trace.data.spans])
    assert base64.b64encode(cat.read_bytes()).decode()[:200] not in dumped
    reference = trace.data.spans[0].inputs["messages"][-1]["content"][1]["image_url"]["url"]
    digest = hashlib.sha256(cat.read_bytes()).hexdigest()[:16]
    assert reference == f"[image cat.png: image/png, {cat.stat().st_size} bytes, 1024x1024, sha256:{digest}]"
    assert len(dumped) < 5000


def test_estimates_and_budgets_count_image_tokens(client, cat):
    text = client.count_tokens([{"role": "user", "content": "Describe this image"}], model="gpt-4o")
    with_image = client.count_tokens(
        [{"role": "user", "content": [{"type": "text", "text": "Describe this image"},
                                      load_images(cat)[0].part()]}], model="gpt-4o",
    )
    assert with_image - text == image_tokens(1024, 1024, "openai") == 85 + 170 * 4  # 768x768: 4 tiles
    url_part = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    unknown = client.count_tokens([{"role": "user", "content": [url_part]}], model="gpt-4o")
    assert unknown >= 1445  # not fetched: counted as the largest image


def test_image_token_formulas():
    assert image_tokens(512, 512, "openai") == 85 + 170
    assert image_tokens(4096, 4096, "openai") == 85 + 170 * 4  # 2048x2048 -> 768x768: 4 tiles
    assert image_tokens(4096, 1024, "openai") == 85 + 170 * 4  # 2048x512 (never scaled up): 4 tiles
    assert image_tokens(1000, 1000, "anthropic") == 1334
    assert image_tokens(None, None, "openai") == 1600


@pytest.mark.parametrize(
    "image, message",
    [
        ("/no/such/picture.jpg", "no such file: '/no/such/picture.jpg'"),
        (b"%PDF-1.7 not an image", "not a supported image type"),
        (12, "must be a path, URL, bytes"),
        ([], "empty list"),
        ("data:image/png;base64,@@@", "not valid base64"),
    ],
)
def test_bad_images_are_refused_before_the_call(client, stub, openai_kw, image, message):
    with pytest.raises(ml.ArgumentError, match=message) as info:
        client.query(model="gpt-4o", prompt="Describe", image=image, **openai_kw)
    assert info.value.argument == "image"
    assert stub.requests == []


def test_semantic_cache_never_matches_a_different_image(client, stub, openai_kw, cat, tmp_path):
    client.set_semantic_cache()
    dog = tmp_path / "dog.png"
    dog.write_bytes(png(64, 64))
    client.query(model="gpt-4o", prompt="Describe this image", image=cat, **openai_kw)
    r = client.query(model="gpt-4o", prompt="Describe this image", image=dog, **openai_kw)
    assert r.cached is None and len(stub.requests) == 2


def test_exact_cache_keys_on_the_image(client, stub, openai_kw, cat, tmp_path):
    client.set_cache()
    dog = tmp_path / "dog.png"
    dog.write_bytes(png(64, 64))
    client.query(model="gpt-4o", prompt="Describe", image=cat, **openai_kw)
    assert client.query(model="gpt-4o", prompt="Describe", image=cat, **openai_kw).cached == "exact"
    assert client.query(model="gpt-4o", prompt="Describe", image=dog, **openai_kw).cached is None

"""Request bodies: size enforced while reading, bounded nesting, valid Unicode, bounded stop strings."""

from __future__ import annotations

import asyncio
import json

import pytest

from loraplex.experts.errors import PayloadTooLargeError, RequestError, SamplingError
from loraplex.experts.sampling import MAX_STOP_CHARS, SamplingParams
from loraplex.gateway.request_body import MAX_JSON_DEPTH, parse_json, read_limited


def _read(chunks, limit, content_length=None):
    consumed = []

    async def stream():
        for c in chunks:
            consumed.append(c)
            yield c

    async def main():
        return await read_limited(stream(), limit, content_length)

    return asyncio.run(main()), consumed


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    with pytest.raises(PayloadTooLargeError, match="has 50000 bytes; the limit is 2500"):
        _read([b"x" * 1000] * 50, 2500, content_length="50000")
    out, consumed = _read([b"ab", b"cd"], 10, content_length="4")
    assert out == b"abcd" and len(consumed) == 2


def test_reading_stops_at_the_first_chunk_over_the_limit():
    """Defect 8: the body was read in full before the size check (no length declared, e.g. chunked uploads)."""
    seen = []

    async def stream():
        for i in range(100):
            seen.append(i)
            yield b"y" * 100

    async def main():
        with pytest.raises(PayloadTooLargeError):
            await read_limited(stream(), 350)

    asyncio.run(main())
    assert seen == [0, 1, 2, 3]  # 400 bytes > 350: the rest of the body is never pulled in


BAD = [
    # name, raw body, message fragment
    (
        "100,000 nested arrays",
        b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        f"nested deeper than {MAX_JSON_DEPTH} levels",
    ),
    (
        "too deep for the walk",
        json.dumps({"composition": json.loads("[" * 40 + "]" * 40)}).encode(),
        "nested deeper than",
    ),
    (
        "lone surrogate in a value",
        b'{"model": "a", "prompt": "\\ud800 hi"}',
        r"body.prompt: string holds a lone UTF-16 surrogate (\ud800)",
    ),
    ("lone surrogate in a key", b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
    (
        "lone surrogate deep inside",
        b'{"messages": [{"role": "user", "content": "ok \\udc80"}]}',
        "body.messages[0].content",
    ),
    ("not an object", b"[1, 2]", "body must be a JSON object, got list"),
    ("not JSON", b"{nope", "body is not valid JSON"),
]


@pytest.mark.parametrize("name,raw,match", BAD, ids=[c[0] for c in BAD])
def test_bad_bodies_are_400s(name, raw, match):
    """Defects 11 and 12: a lone surrogate reached the tokenizer on the engine thread; deep nesting was a 500
    (RecursionError)."""
    with pytest.raises(RequestError) as e:
        parse_json(raw)
    assert match in str(e.value) and e.value.status == 400


def test_valid_unicode_and_reasonable_nesting_pass():
    body = {
        "prompt": "héllo 👋 \u4e16\u754c",
        "composition": {"mode": "chain", "stages": [{"adapter": "a", "prompt": "{input}"}]},
    }
    assert parse_json(json.dumps(body).encode()) == body  # a surrogate *pair* (\ud83d\udc4b) is valid JSON for 👋


def test_stop_strings_are_bounded():
    """Defect 13: a 100,000-character stop string was accepted (every decode step scans for it)."""
    with pytest.raises(SamplingError, match=f"at most {MAX_STOP_CHARS} characters, got one of 100000"):
        SamplingParams(stop=["x" * 100_000])
    assert SamplingParams(stop=["y" * MAX_STOP_CHARS]).stop == ("y" * MAX_STOP_CHARS,)

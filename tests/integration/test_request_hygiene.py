"""Hostile or odd request bodies over real HTTP: 4xx answers, nothing stuck, nothing leaked on the replicas."""

from __future__ import annotations

import json

import httpx
import pytest


def _inflight(server) -> int:
    groups = httpx.get(f"{server}/v1/stats", timeout=30).json().values()
    return sum(g["total"].get("inflight", 0) for g in groups)


BAD = [
    # name, raw body, status, message fragment
    ("lone surrogate", b'{"temperature": 0, "model": "intent", "prompt": "\\ud800 hi"}', 400, "lone UTF-16 surrogate"),
    (
        "lone surrogate in chat",
        b'{"temperature": 0, "model": "intent", "messages": [{"role": "user", "content": "x \\udfff"}]}',
        400,
        "lone UTF-16 surrogate",
    ),
    (
        "100,000 nested arrays",
        b'{"temperature": 0, "model": "intent", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "nested deeper than",
    ),
    (
        "100,000-char stop string",
        json.dumps({"temperature": 0, "model": "intent", "prompt": "x", "stop": ["s" * 100_000]}).encode(),
        400,
        "at most 256 characters",
    ),
]


@pytest.mark.parametrize("name,body,status,message", BAD, ids=[c[0] for c in BAD])
def test_hostile_bodies_get_4xx_and_leave_no_request_behind(server, name, body, status, message):
    """Defects 11-13: a lone surrogate hung its request forever and leaked one `inflight` per try on the replica;
    deep nesting answered 500; a 100,000-character stop string was accepted."""
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    for _ in range(3):
        r = httpx.post(f"{server}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == status, r.text
        assert message in r.json()["error"]["message"]
    assert _inflight(server) == 0
    ok = httpx.post(
        f"{server}/v1/completions",
        json={"temperature": 0, "model": "intent", "prompt": "hello", "max_tokens": 2},
        timeout=60,
    )
    assert ok.status_code == 200


def test_a_chunked_body_over_the_limit_is_refused(server):
    """Defect 8: the size limit holds for bodies without a Content-Length too (read in chunks, stopped early)."""

    def chunks():
        yield b'{"temperature": 0, "model": "intent", "prompt": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'"}'

    r = httpx.post(
        f"{server}/v1/completions", content=chunks(), headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413 and "exceeds the limit of 1000000 bytes" in r.json()["error"]["message"]


def test_chain_usage_counts_every_stage(server):
    """Defect 9: a chain's usage counted the last stage only."""
    chain = {
        "mode": "chain",
        "stages": [
            {"adapter": "entities", "prompt": "Extract JSON.\n\nMessage: {input}\n\nAnswer:"},
            {"adapter": "intent", "prompt": "What is the intent?\n\nMessage: {input}\n\nAnswer:"},
        ],
    }
    msg = "I was charged twice for ORD-48213"
    r = httpx.post(
        f"{server}/v1/completions",
        json={"temperature": 0, "model": "base", "prompt": msg, "composition": chain, "max_tokens": 8},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    stages = [
        httpx.post(
            f"{server}/v1/completions",
            json={
                "temperature": 0,
                "model": st["adapter"],
                "prompt": st["prompt"].replace("{input}", msg),
                "max_tokens": 8,
            },
            timeout=60,
        ).json()["usage"]
        for st in chain["stages"]
    ]
    assert usage["prompt_tokens"] == sum(s["prompt_tokens"] for s in stages)
    assert usage["completion_tokens"] == sum(s["completion_tokens"] for s in stages)

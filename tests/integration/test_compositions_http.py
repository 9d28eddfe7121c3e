"""Named compositions over real HTTP: a config composition and a registered one answer token for token like
the same inline composition, /v1/models shows their definitions, and the admin API validates them."""

from __future__ import annotations

import httpx
import pytest

from loraplex.demo.data import make_examples

CONFIGURED = {"mode": "blend", "space": "logits", "weights": {"intent": 0.5868, "sentiment": 0.4132}}


def _complete(server: str, **body) -> dict:
    body = {"temperature": 0, "max_tokens": 8, "logprobs": 1, **body}
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _tokens(out: dict) -> tuple[str, list[str]]:
    choice = out["choices"][0]
    return choice["text"], choice["logprobs"]["tokens"]


@pytest.mark.parametrize("task", ["intent", "sentiment"])
def test_the_configured_composition_equals_the_inline_one_token_for_token(server, task):
    prompt = make_examples(task, 1, seed=11, split="heldout")[0].prompt
    named = _complete(server, model="support-mix", prompt=prompt)
    inline = _complete(server, model="intent", composition=CONFIGURED, prompt=prompt)
    assert _tokens(named) == _tokens(inline)
    assert named["model"] == "support-mix" and named["routing"]["composition"] == "support-mix"


def test_register_call_list_and_delete_a_composition(server):
    spec = {"mode": "blend", "weights": {"intent": 0.3, "sentiment": 0.7}, "space": "delta"}
    r = httpx.post(f"{server}/v1/compositions", json={"name": "team/soft", "composition": spec}, timeout=30)
    assert r.status_code == 201, r.text
    prompt = make_examples("sentiment", 1, seed=12, split="heldout")[0].prompt
    assert _tokens(_complete(server, model="team/soft", prompt=prompt)) == _tokens(
        _complete(server, model="intent", composition=spec, prompt=prompt)
    )
    models = {m["id"]: m for m in httpx.get(f"{server}/v1/models", timeout=30).json()["data"]}
    assert models["team/soft"]["composition"]["definition"] == spec
    assert models["support-mix"]["composition"]["source"] == "config"
    again = httpx.post(f"{server}/v1/compositions", json={"name": "team/soft", "composition": spec}, timeout=30)
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
    assert httpx.delete(f"{server}/v1/compositions/team/soft", timeout=30).status_code == 200
    gone = httpx.post(f"{server}/v1/completions", json={"model": "team/soft", "prompt": prompt}, timeout=30)
    assert gone.status_code == 404


ERRORS = [
    ("unknown adapter", "x", {"mode": "single", "adapter": "nope"}, 404, "unknown adapter 'nope'"),
    ("shadows an adapter", "intent", {"mode": "single", "adapter": "sentiment"}, 409, "shadows an adapter"),
    ("nested", "y", {"mode": "single", "adapter": "support-mix"}, 400, "cannot nest"),
    ("bad mode", "z", {"mode": "sum", "adapters": ["intent"]}, 400, "does not match any of the expected tags"),
]


@pytest.mark.parametrize("name,comp_name,spec,status,match", ERRORS, ids=[c[0] for c in ERRORS])
def test_composition_registration_errors_over_http(server, name, comp_name, spec, status, match):
    r = httpx.post(f"{server}/v1/compositions", json={"name": comp_name, "composition": spec}, timeout=30)
    assert r.status_code == status, r.text
    assert match in r.json()["error"]["message"]

"""Clients nobody here wrote, against the running demo app: the official `openai` Node client and LangChain's
`ChatOpenAI` / `OpenAI` with `base_url`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from loraplex.demo.data import INTENTS, make_examples

pytestmark = pytest.mark.integration
NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
E = make_examples("intent", 1, seed=31, split="heldout")[0]


def test_official_openai_node_client(server):
    node = shutil.which("node")
    assert node, "node is missing (Node 20)"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `make tools` (npm ci in tests/clients/node)"
    run = subprocess.run(
        [node, "check.mjs", f"{server}/v1", E.prompt, json.dumps(list(INTENTS))],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"base", "auto", "intent"} <= set(out["models"])
    c = out["completion"]
    assert c["text"].strip() == E.answer and c["routing"]["group"] == "support"
    assert "".join(c["tokens"]).startswith(c["text"]) and c["usage"]["completion_tokens"] >= 1
    assert out["many"] == [0, 1, 2, 3]  # 2 prompts x n=2
    assert out["chat"]["finish"] == "stop" and json.loads(out["chat"]["content"])["intent"] in INTENTS
    assert out["stream"]["text"] and out["stream"]["usage"]["completion_tokens"] >= 1
    assert out["error"]["status"] == 404 and out["error"]["name"] == "NotFoundError"
    assert "unknown adapter 'no-such-adapter'" in out["error"]["message"]


def test_langchain_chat_openai_and_openai(server):
    from langchain_openai import ChatOpenAI, OpenAI

    chat = ChatOpenAI(model="intent", base_url=f"{server}/v1", api_key="unused", temperature=0, max_tokens=8)
    msg = chat.invoke(E.prompt)
    assert msg.content.strip() == E.answer
    assert msg.response_metadata["token_usage"]["completion_tokens"] >= 1
    streamed = "".join(chunk.content for chunk in chat.stream(E.prompt))
    assert streamed == msg.content
    llm = OpenAI(model="intent", base_url=f"{server}/v1", api_key="unused", temperature=0, max_tokens=8)
    assert llm.invoke(E.prompt).strip() == E.answer
    batch = llm.batch([E.prompt, E.prompt])
    assert [b.strip() for b in batch] == [E.answer, E.answer]


def test_vllm_bench_serve_drives_the_server(server):
    """vLLM's own benchmark client: it always sends `repetition_penalty` and streams with usage; every request of
    a short Poisson run must succeed, with a random adapter each."""
    from loraplex.bench.vllm_bench import run_vllm_bench
    from tests.integration.conftest import DEMO

    st = run_vllm_bench(
        "loraplex", server, 4.0, timeout_s=300, tokenizer=str(DEMO / "base"),
        names=["intent", "sentiment", "entities"], num_prompts=8, prompt_tokens=16, max_tokens=4, seed=0,
    )  # fmt: skip
    assert (st["completed"], st["errors"]) == (8, 0), st
    assert st["ttft_p50_ms"] is not None and st["tpot_p50_ms"] is not None and st["tokens_per_s"] > 0

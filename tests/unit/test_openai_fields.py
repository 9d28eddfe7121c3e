"""The OpenAI/vLLM request fields at the gateway, without Serve: defaults, unsupported fields, lists of prompts,
echo, chat content parts and roles, vLLM extensions, and the response shapes they produce."""

from __future__ import annotations

import pytest

from loraplex.config.app import AppArgs
from loraplex.experts.errors import RequestError
from loraplex.experts.logprobs import TokenLogprob
from loraplex.experts.request import Choice, Result
from loraplex.gateway import responses
from loraplex.gateway.generation_defaults import generation_defaults
from loraplex.gateway.planner import Gateway
from loraplex.gateway.protocol import ChatCompletionRequest, CompletionRequest
from loraplex.gateway.request_body import parse_body


def _gateway(tiny, **defaults):
    from transformers import AutoTokenizer

    args = AppArgs(
        base_model=str(tiny["base"]),
        adapter_roots=[str(tiny["roots"])],
        groups=[{"name": "g1", "adapters": ["a", "b"]}, {"name": "g2", "adapters": ["c"]}],
        limits={"max_tokens_limit": 32, "default_max_tokens": 8, "max_prompts": 3},
    )
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}A:"
    return Gateway(args, None, tok, sampling_defaults=defaults)


@pytest.fixture(scope="module")
def gateway(tiny):
    return _gateway(tiny)


def _body(raw: dict, model=CompletionRequest):
    import json

    return parse_body(json.dumps(raw).encode(), model)


def test_temperature_defaults_to_the_generation_config_else_one(tiny, tmp_path):
    plain = _gateway(tiny).plan_completion(CompletionRequest(model="a", prompt="x"))
    assert plain.payload["sampling"]["temperature"] == 1.0  # OpenAI's default, not greedy
    tuned = _gateway(tiny, temperature=0.6, top_k=20).plan_completion(CompletionRequest(model="a", prompt="x"))
    assert (tuned.payload["sampling"]["temperature"], tuned.payload["sampling"]["top_k"]) == (0.6, 20)
    greedy = _gateway(tiny, temperature=0.6).plan_completion(CompletionRequest(model="a", prompt="x", temperature=0))
    assert greedy.payload["sampling"]["temperature"] == 0.0
    # read from the model folder: the tiny model's generation_config sets none of them; a written one does
    assert generation_defaults(str(tiny["base"]))["temperature"] == 1.0
    import shutil

    shutil.copytree(tiny["base"], tmp_path / "m")
    cfg = (tmp_path / "m" / "generation_config.json").read_text().replace("{", '{"temperature": 0.3, "top_p": 0.8,', 1)
    (tmp_path / "m" / "generation_config.json").write_text(cfg)
    got = generation_defaults(str(tmp_path / "m"))
    assert (got["temperature"], got["top_p"], got["top_k"]) == (0.3, 0.8, 0)
    assert generation_defaults(str(tmp_path / "missing"))["temperature"] == 1.0


UNSUPPORTED = [
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "field 'tools' is not supported"),
    ("best_of", {"best_of": 3}, "field 'best_of' is not supported by this server (best_of (use n))"),
    ("suffix", {"suffix": "end"}, "field 'suffix' is not supported"),
    ("beam search", {"use_beam_search": True}, "field 'use_beam_search' is not supported"),
    ("two at once", {"suffix": "x", "tool_choice": "required"}, "'tool_choice' is not supported"),
    ("unknown field", {"frobnicate": 1}, "frobnicate"),
    ("continuous usage", {"stream_options": {"continuous_usage_stats": True}}, "continuous_usage_stats"),
    ("request id with a newline", {"request_id": "a\nb"}, "String should match pattern"),
]


@pytest.mark.parametrize("name,extra,match", UNSUPPORTED, ids=[c[0] for c in UNSUPPORTED])
def test_unsupported_fields_are_named(name, extra, match):
    with pytest.raises(Exception, match=match.replace("(", r"\(").replace(")", r"\)")):
        _body({"model": "a", "prompt": "x", **extra})


def test_off_values_of_unsupported_fields_are_accepted():
    """What LangChain's OpenAI and vllm bench send by default must parse."""
    req = _body(
        {
            "model": "a",
            "prompt": "x",
            "best_of": 1,
            "suffix": None,
            "tools": None,
            "logit_bias": {},
            "n": 1,
            "repetition_penalty": 1.0,
            "stream_options": {"include_usage": True},
            "use_beam_search": False,
        }
    )
    assert req.model == "a" and req.stream_options.include_usage


def test_a_list_of_prompts_plans_one_part_per_prompt(gateway):
    plan = gateway.plan_completion(CompletionRequest(model="a", prompt=["one", "two"], n=2, temperature=1.0))
    assert [p.payload["prompt"] for p in plan.parts] == ["one", "two"]
    assert all(p.payload["sampling"]["n"] == 2 for p in plan.parts)
    ids = gateway.plan_completion(CompletionRequest(model="c", prompt=[[5, 6], [7]]))
    assert [p.payload["prompt"] for p in ids.parts] == [[5, 6], [7]] and ids.group == "g2"
    results = [
        Result("A", "stop", 1, 1, more=[Choice("B", "length")]),
        Result("C", "length", 2, 3, more=[Choice("D", "stop")]),
    ]
    body = responses.completion_response(plan, results)
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "A"), (1, "B"), (2, "C"), (3, "D")]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


PROMPT_CASES = [
    ("too many prompts", dict(prompt=["a", "b", "c", "d"]), "at most 3 per request"),
    ("empty list", dict(prompt=[]), "must not be empty"),
    ("streamed list", dict(prompt=["a", "b"], stream=True), "streaming takes one prompt"),
    ("streamed echo", dict(prompt="a", echo=True, stream=True), "without logprobs or echo"),
    ("max_tokens 0 without echo", dict(prompt="a", max_tokens=0), "0 only with echo"),
    (
        "both formats",
        dict(prompt="a", response_format={"type": "json_object"}, structured_outputs={"json_object": True}),
        "not both",
    ),
]


@pytest.mark.parametrize("name,fields,match", PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES])
def test_completion_request_errors(gateway, name, fields, match):
    with pytest.raises(RequestError, match=match):
        gateway.plan_completion(CompletionRequest(model="a", **fields))


def test_echo_puts_the_prompt_and_its_scores_first(gateway):
    plan = gateway.plan_completion(CompletionRequest(model="a", prompt="hi there", echo=True, logprobs=1, max_tokens=1))
    assert plan.payload["sampling"]["prompt_logprobs"] == 1 and plan.echo == "hi there"
    prompt_lp = [TokenLogprob("hi", None, None), TokenLogprob(" there", -1.5, [(" there", -1.5)])]
    result = Result(
        "!",
        "length",
        2,
        1,
        token_ids=[9],
        logprobs=[TokenLogprob("!", -0.25, [("!", -0.25)])],
        prompt_logprobs=prompt_lp,
    )
    (choice,) = responses.completion_response(plan, [result])["choices"]
    assert choice["text"] == "hi there!"
    assert choice["logprobs"] == {
        "tokens": ["hi", " there", "!"],
        "token_logprobs": [None, -1.5, -0.25],
        "top_logprobs": [None, {" there": -1.5}, {"!": -0.25}],
        "text_offset": [0, 2, 8],
    }
    only = gateway.plan_completion(CompletionRequest(model="a", prompt=[5, 6, 7], echo=True, max_tokens=0))
    assert only.payload["sampling"]["prompt_logprobs"] == 0 and only.echo == gateway.tokenizer.decode([5, 6, 7])


def test_chat_takes_text_parts_developer_role_and_continuation(gateway):
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]
    p = gateway.plan_chat(
        _body(
            {
                "model": "a",
                "messages": [
                    {"role": "developer", "content": "be brief"},
                    {"role": "user", "content": parts, "name": "jo"},
                ],
            },
            ChatCompletionRequest,
        )
    )
    assert gateway.tokenizer.decode(p.payload["prompt"]) == "[system] be brief\n[user] hello\nworld\nA:"
    cont = gateway.plan_chat(
        ChatCompletionRequest(
            model="a",
            messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer"}],
            add_generation_prompt=False,
            continue_final_message=True,
        )
    )
    assert gateway.tokenizer.decode(cont.payload["prompt"]).endswith("[assistant] The answer")
    with pytest.raises(Exception, match="Input should be 'text'"):
        _body(
            {"model": "a", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            ChatCompletionRequest,
        )
    with pytest.raises(RequestError, match="continue_final_message"):
        gateway.plan_chat(ChatCompletionRequest(model="a", messages=[{"role": "assistant", "content": "x"}]))


def test_vllm_extension_fields_reach_the_engine(gateway):
    p = gateway.plan_completion(
        CompletionRequest(
            model="a",
            prompt="x",
            top_k=-1,
            stop_token_ids=[4],
            include_stop_str_in_output=True,
            skip_special_tokens=False,
            allowed_token_ids=[4, 5],
            structured_outputs={"json": {"type": "object"}},
            request_id="abc-1",
            min_p=0.1,
            repetition_penalty=1.1,
        )
    )
    s = p.payload["sampling"]
    assert (s["top_k"], s["stop_token_ids"], s["include_stop_str"], s["skip_special_tokens"]) == (0, [4], True, False)
    assert s["allowed_token_ids"] == [4, 5] and s["structured"] == ["json_schema", '{"type": "object"}']
    assert (s["min_p"], s["repetition_penalty"], p.id) == (0.1, 1.1, "abc-1")
    raw = gateway.plan_completion(CompletionRequest(model="a", prompt="hello world", add_special_tokens=False))
    assert raw.payload["prompt"] == gateway.tokenizer("hello world", add_special_tokens=False)["input_ids"]

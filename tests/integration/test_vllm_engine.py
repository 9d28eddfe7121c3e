"""The vLLM engine backend against references, on the demo model in float32 (real vLLM CPU engine, no Ray):
greedy outputs equal the native engine's token for token in every composition mode vLLM runs, a single
adapter equals PEFT, and the composed-adapter cache, refusals, cancellation and re-registration behave."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import wait

import pytest
import torch

from loraplex.config.engine import EngineConfig, VllmOptions
from loraplex.experts.engine import Engine
from loraplex.experts.errors import AdapterValidationError, CompositionError, UnknownAdapterError
from loraplex.experts.request import Request, Result
from tests.integration.conftest import ensure_demo

pytest.importorskip("vllm")

PROMPTS = [
    "what does this customer need? my parcel never showed up",
    "Extract the entities: my order ORD-12345 never came, write to jane.doe@example.com",
    "how does the customer feel? this is the worst service I have ever had",
]
COMPOSITIONS = {
    "base": None,
    "single intent": "intent",
    "single entities": "entities",
    "stack": {"mode": "stack", "adapters": ["intent", "sentiment"]},
    "blend delta": {"mode": "blend", "weights": {"intent": 0.7, "sentiment": 0.3}},
    "moe top-2": {"mode": "moe", "top_k": 2, "weights": {"intent": 0.5, "sentiment": 0.3, "entities": 0.2}},
    "chain": {
        "mode": "chain",
        "stages": [
            {"adapter": "entities", "prompt": "{input}"},
            {"adapter": "intent", "prompt": "what does this customer need? {input} {previous}"},
        ],
    },
}
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A copy of the demo adapters (tests replace files in it) and both engines on it."""
    models = ensure_demo()
    root = tmp_path_factory.mktemp("adapters")
    for name in ("intent", "sentiment", "entities"):
        shutil.copytree(models / "adapters" / name, root / name)
    shutil.copytree(models / "adapters" / "sentiment", root / "extra")
    config = EngineConfig(
        base_model=str(models / "base"),
        adapter_roots=[str(root)],
        device="cpu",
        dtype="float32",
        max_slots=4,
        max_host_adapters=8,
    )
    from loraplex.experts.vllm_engine import VllmReplica

    options = VllmOptions(
        max_loras=2,  # fewer than the distinct adapters of the mixed-batch test: some wait for a slot
        max_cpu_loras=8,
        max_lora_rank=32,  # two rank-16 adapters fit, three do not
        max_num_seqs=8,
        cpu_kvcache_space_gb=1,
        composed_cache_count=4,
        composed_cache_dir=str(tmp_path_factory.mktemp("composed")),
    )
    replica = VllmReplica(config, options, ["intent"])
    native = Engine.from_config(config)
    yield {"vllm": replica, "native": native, "root": root, "models": models}
    replica.close()


def _vllm(demo, prompt, comp, **sampling) -> Result:
    res = demo["vllm"].submit(
        {"prompt": prompt, "composition": comp, "sampling": {"max_tokens": MAX_TOKENS, **sampling}}
    )
    out = res.result(120)
    if isinstance(out, Exception):
        raise out
    return out


def _native(demo, prompt, comp, **sampling) -> Result:
    return demo["native"].generate([Request.from_json(prompt, comp, **{"max_tokens": MAX_TOKENS, **sampling})])[0]


@pytest.mark.parametrize("mode", list(COMPOSITIONS))
def test_greedy_outputs_equal_the_native_engine_token_for_token(demo, mode):
    comp = COMPOSITIONS[mode]
    for prompt in PROMPTS:
        ours, ref = _vllm(demo, prompt, comp), _native(demo, prompt, comp)
        assert ours.token_ids == ref.token_ids, (mode, prompt, ours.text, ref.text)
        assert (ours.text, ours.finish_reason, ours.prompt_tokens, ours.completion_tokens, ours.stages) == (
            ref.text,
            ref.finish_reason,
            ref.prompt_tokens,
            ref.completion_tokens,
            ref.stages,
        )


def test_chat_token_ids_and_a_concurrent_mixed_batch_equal_the_native_engine(demo):
    """Token-id prompts (what the gateway sends for chat), many adapters and modes in flight at once."""
    tok = demo["native"].tokenizer
    messages = [{"role": "user", "content": PROMPTS[0]}]
    chat = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    jobs = [(p, c) for c in COMPOSITIONS.values() if not isinstance(c, dict) or c["mode"] != "chain" for p in PROMPTS]
    jobs.append((chat, "intent"))
    futures = [
        demo["vllm"].submit({"prompt": p, "composition": c, "sampling": {"max_tokens": MAX_TOKENS}}) for p, c in jobs
    ]
    wait(futures, timeout=300)
    for (p, c), fut in zip(jobs, futures):
        assert fut.result().token_ids == _native(demo, p, c).token_ids, (p, c)


def test_a_single_adapter_equals_peft_generate(demo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models = demo["models"]
    base = AutoModelForCausalLM.from_pretrained(models / "base", dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, demo["root"] / "entities").eval()
    ids = demo["native"].tokenizer(PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        out = peft.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0)
    ref = out[0, ids["input_ids"].shape[1] :].tolist()
    ref = ref[:-1] if ref and ref[-1] == base.generation_config.eos_token_id else ref
    assert _vllm(demo, PROMPTS[1], "entities").token_ids == ref


def test_composed_adapters_are_cached_by_canonical_composition(demo):
    rep = demo["vllm"]
    comp = {"mode": "blend", "weights": {"sentiment": 0.4, "intent": 0.6}}
    _vllm(demo, PROMPTS[0], comp)
    hits, misses = rep.composed.hits, rep.composed.misses
    near = {"mode": "blend", "weights": {"intent": 0.60001, "sentiment": 0.39999}}  # same at 3 decimals
    stack_same = {"mode": "moe", "top_k": 2, "weights": {"intent": 0.6, "sentiment": 0.4}}  # same weights, other mode
    _vllm(demo, PROMPTS[0], near)
    _vllm(demo, PROMPTS[0], stack_same)
    assert (rep.composed.hits, rep.composed.misses) == (hits + 2, misses)
    assert len(rep.composed) <= rep.options.composed_cache_count and rep.composed.leased() == 0


CASES = [
    (
        "rank over max_lora_rank",
        {"mode": "stack", "adapters": ["intent", "sentiment", "entities"]},
        CompositionError,
        r"rank 48 .*max_lora_rank 32",
    ),
    (
        "logits blend",
        {"mode": "blend", "space": "logits", "weights": {"intent": 0.5, "sentiment": 0.5}},
        CompositionError,
        "native-engine group",
    ),
    ("unknown adapter", "nope", UnknownAdapterError, "nope"),
    ("unsafe name", "../intent", Exception, "invalid adapter name"),
]


@pytest.mark.parametrize("name,comp,error,match", CASES, ids=[c[0] for c in CASES])
def test_refusals_are_typed_and_name_the_problem(demo, name, comp, error, match):
    out = demo["vllm"].submit({"prompt": PROMPTS[0], "composition": comp, "sampling": {}}).result(60)
    assert isinstance(out, error) and 400 <= out.status < 500, out
    assert re.search(match, str(out)), str(out)


def test_a_broken_adapter_fails_its_request_only(demo):
    bad = demo["root"] / "broken"
    shutil.copytree(demo["root"] / "intent", bad)
    (bad / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    out = demo["vllm"].submit({"prompt": PROMPTS[0], "composition": "broken", "sampling": {}}).result(60)
    assert isinstance(out, AdapterValidationError) and "broken" in str(out)
    assert _vllm(demo, PROMPTS[0], "intent").text == _native(demo, PROMPTS[0], "intent").text


def test_cancel_aborts_the_vllm_request(demo):
    rep = demo["vllm"]
    started = threading.Event()
    fut = rep.submit(
        {"prompt": PROMPTS[0], "composition": "intent", "sampling": {"max_tokens": 200, "ignore_eos": True}},
        on_token=lambda _delta: started.set(),
    )
    assert started.wait(60)
    rep.cancel(fut)
    out = fut.result(30)
    assert isinstance(out, Result) and out.finish_reason == "cancelled"
    deadline = time.time() + 10
    while rep.llm.get_num_unfinished_requests() and time.time() < deadline:
        time.sleep(0.05)
    assert rep.llm.get_num_unfinished_requests() == 0 and rep.stats()["inflight"] == 0


def test_streamed_deltas_add_up_to_the_answer(demo):
    deltas: list[str] = []
    fut = demo["vllm"].submit(
        {"prompt": PROMPTS[1], "composition": "entities", "sampling": {"max_tokens": MAX_TOKENS}},
        on_token=deltas.append,
    )
    out = fut.result(60)
    assert len(deltas) > 1 and "".join(deltas) == out.text


def test_a_re_registered_part_rebuilds_its_composed_adapter(demo):
    """`extra` starts as a copy of sentiment; replaced by intent's files, the blend intent/extra 50:50 is
    exactly intent alone, and a single request for `extra` serves the new files too."""
    blend = {"mode": "blend", "weights": {"intent": 0.5, "extra": 0.5}}
    before = _vllm(demo, PROMPTS[2], blend)
    assert before.token_ids == _native(demo, PROMPTS[2], blend).token_ids
    _vllm(demo, PROMPTS[2], "extra")
    root = demo["root"]
    tmp = root / ".extra.new"
    shutil.copytree(root / "intent", tmp)
    shutil.rmtree(root / "extra")
    tmp.rename(root / "extra")
    intent = _vllm(demo, PROMPTS[2], "intent")
    assert _vllm(demo, PROMPTS[2], blend).token_ids == intent.token_ids
    assert _vllm(demo, PROMPTS[2], "extra").token_ids == intent.token_ids


def test_n_choices_share_the_request_and_count_in_usage(demo):
    greedy = _vllm(demo, PROMPTS[0], "intent", n=2)
    assert [c.token_ids for c in greedy.choices] == [greedy.token_ids] * 2
    assert greedy.completion_tokens == 2 * _vllm(demo, PROMPTS[0], "intent").completion_tokens
    sampled = _vllm(demo, PROMPTS[1], None, n=3, temperature=1.0, seed=11, max_tokens=16, ignore_eos=True)
    assert len(sampled.choices) == 3 and sampled.completion_tokens == 48
    assert len({tuple(c.token_ids) for c in sampled.choices}) > 1  # independent samples


def test_logprobs_equal_a_hand_computed_log_softmax(demo):
    """The chosen tokens' log probabilities and the top alternatives, against the PEFT model's own forward."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = _vllm(demo, PROMPTS[1], "entities", logprobs=3)
    assert out.logprobs is not None and len(out.token_ids) > 3
    assert len(out.logprobs) == len(out.token_ids) + (out.finish_reason == "stop")  # the EOS step is listed too
    base = AutoModelForCausalLM.from_pretrained(demo["models"] / "base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, demo["root"] / "entities").eval()
    prompt = demo["native"].tokenizer(PROMPTS[1])["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.token_ids])).logits[0]  # [seq, vocab]
    ref = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # [generated, vocab]: step i predicts token i
    tok = demo["native"].tokenizer
    for i, (t, step) in enumerate(zip(out.token_ids, out.logprobs)):
        assert step.logprob == pytest.approx(ref[i, t].item(), abs=1e-3)
        top = torch.topk(ref[i], 3)
        assert [lp for _, lp in step.top] == pytest.approx(top.values.tolist(), abs=1e-3)
        assert step.token == tok.decode([t]) and step.top[0][0] == tok.decode([top.indices[0].item()])


def test_json_schema_output_parses_and_validates(demo):
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": ["order_status", "billing", "cancel_order"]}},
        "required": ["intent"],
        "additionalProperties": False,
    }
    for prompt in PROMPTS:
        out = _vllm(demo, prompt, "intent", structured=("json_schema", json.dumps(schema)), max_tokens=48)
        assert out.finish_reason == "stop", out.text  # compact JSON: closed well within the budget
        jsonschema.validate(json.loads(out.text), schema)
        loose = _vllm(demo, prompt, None, structured=("json_object", ""), max_tokens=48)
        assert loose.finish_reason == "length" or isinstance(json.loads(loose.text), dict), loose.text


def test_a_schema_vllm_cannot_compile_is_a_400(demo):
    bad = {"prompt": PROMPTS[0], "composition": "intent", "sampling": {"structured": ["json_schema", '{"type": "x"}']}}
    out = demo["vllm"].submit(bad).result(60)
    assert out.status == 400 and "Unsupported type" in str(out)
    assert _vllm(demo, PROMPTS[0], "intent").text  # and the engine keeps serving


def test_logit_bias_min_tokens_and_penalties_reach_vllm(demo):
    tok = demo["native"].tokenizer
    forced = tok(" order")["input_ids"][-1]
    out = _vllm(demo, PROMPTS[0], "intent", logit_bias=[[forced, 100.0]], max_tokens=5, ignore_eos=True)
    assert out.token_ids == [forced] * 5
    assert _vllm(demo, PROMPTS[0], "intent", min_tokens=12).completion_tokens >= 12
    plain = _vllm(demo, PROMPTS[1], None, max_tokens=40)
    assert _vllm(demo, PROMPTS[1], None, max_tokens=40, repetition_penalty=2.0).token_ids != plain.token_ids
    # a penalty of +2 moves no token where the demo model's margins exceed 2 (it does on some rebuilds of the
    # demo); one of the two signs changes the answer on every build seen (their meaning against the native
    # engine is checked token for token in test_sampling_fields_mean_the_same_on_both_engines)
    penalized = [_vllm(demo, PROMPTS[1], None, max_tokens=40, presence_penalty=p).token_ids for p in (2.0, -2.0)]
    assert any(t != plain.token_ids for t in penalized)


SCHEMA = {
    "type": "object",
    "properties": {"intent": {"enum": ["order_status", "billing", "cancel_order"]}, "urgent": {"type": "boolean"}},
    "required": ["intent", "urgent"],
    "additionalProperties": False,
}
SAME_FIELDS = [
    ("repetition_penalty", dict(repetition_penalty=1.6)),
    ("frequency+presence", dict(frequency_penalty=0.8, presence_penalty=0.6, ignore_eos=True)),  # long enough to repeat
    ("logit_bias", dict(logit_bias=[[35, 4.0], [223, -100.0], [296, -100.0]])),  # bans intent's first tokens
    ("min_tokens", dict(min_tokens=20)),
    ("stop_token_ids", dict(stop_token_ids=[29], ignore_eos=True)),
    ("allowed_token_ids", dict(allowed_token_ids=list(range(20, 200)))),
    ("json_schema", dict(structured=["json_schema", json.dumps(SCHEMA)], max_tokens=48)),
    ("include_stop_str", dict(stop=["e"], include_stop_str=True)),
]

# fields that the plain run keeps too, so that the comparison is of the same length without the field under test
SAME_LENGTH = {"frequency+presence": ("ignore_eos",)}


@pytest.mark.parametrize("name,fields", SAME_FIELDS, ids=[c[0] for c in SAME_FIELDS])
def test_sampling_fields_mean_the_same_on_both_engines(demo, name, fields):
    """Greedy decoding with each field gives the same tokens on the native engine and on vLLM, and the field
    changed the output (so neither engine can be ignoring it)."""
    changed = False
    budget = {k: v for k, v in fields.items() if k in ("max_tokens", *SAME_LENGTH.get(name, ()))}
    for prompt, comp in ((PROMPTS[0], "intent"), (PROMPTS[1], {"mode": "stack", "adapters": ["entities", "intent"]})):
        ours, ref = _native(demo, prompt, comp, **fields), _vllm(demo, prompt, comp, **fields)
        assert ours.token_ids == ref.token_ids, (name, ours.text, ref.text)
        assert (ours.text, ours.finish_reason, ours.completion_tokens) == (
            ref.text,
            ref.finish_reason,
            ref.completion_tokens,
        )
        plain = _native(demo, prompt, comp, **budget)
        changed |= (ours.text, ours.token_ids) != (plain.text, plain.token_ids)
    assert changed


def test_logprobs_and_echoed_prompt_scores_agree_across_engines(demo):
    for comp in ("entities", {"mode": "blend", "weights": {"intent": 0.6, "sentiment": 0.4}}):
        # min_tokens: scores of several tokens even where a rebuilt demo adapter answers EOS at once
        ours = _native(demo, PROMPTS[1], comp, logprobs=2, prompt_logprobs=2, max_tokens=6, min_tokens=6)
        ref = _vllm(demo, PROMPTS[1], comp, logprobs=2, prompt_logprobs=2, max_tokens=6, min_tokens=6)
        for got, want in ((ours.logprobs, ref.logprobs), (ours.prompt_logprobs, ref.prompt_logprobs)):
            assert len(got) == len(want) > 3
            assert [e.token for e in got] == [e.token for e in want]
            assert [e.logprob for e in got[1:]] == pytest.approx([e.logprob for e in want[1:]], abs=2e-3)
            assert [[t for t, _ in e.top] for e in got[1:]] == [[t for t, _ in e.top] for e in want[1:]]
        assert ref.prompt_logprobs[0].logprob is None
    scored = _vllm(demo, PROMPTS[2], None, prompt_logprobs=0, max_tokens=0)
    assert (scored.token_ids, scored.completion_tokens, scored.text) == ([], 0, "")
    assert len(scored.prompt_logprobs) == scored.prompt_tokens

"""What the vLLM backend hands vLLM, checked without starting it: engine arguments from the group config,
sampling fields, which compositions fold into one adapter, and where the gateway sends a logits blend."""

from __future__ import annotations

import pytest

from loraplex.config.app import AppArgs
from loraplex.config.engine import EngineConfig, VllmOptions
from loraplex.experts.composition import parse_composition
from loraplex.experts.errors import CompositionError
from loraplex.experts.sampling import SamplingParams
from loraplex.experts.vllm_engine import composed_weights, engine_args, module_shapes, sampling_kwargs
from loraplex.gateway.planner import Gateway


def test_engine_args_follow_the_group_config(tiny):
    config = EngineConfig(base_model=str(tiny["base"]), adapter_roots=[str(tiny["roots"])], device="cpu")
    args = engine_args(config, VllmOptions(max_loras=2, max_cpu_loras=6, max_lora_rank=32, max_num_seqs=12))
    assert args == {
        "model": str(tiny["base"]),
        "tokenizer": str(tiny["base"]),
        "dtype": "float32",  # auto means the native engine's rule, not vLLM's (the checkpoint's dtype)
        "enable_lora": True,
        "max_loras": 2,
        "max_cpu_loras": 6,
        "max_lora_rank": 32,
        "max_num_seqs": 12,
        "gpu_memory_utilization": 0.9,
        "enforce_eager": False,
        "disable_log_stats": True,
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    more = engine_args(config, VllmOptions(dtype="bfloat16", max_model_len=128, max_num_batched_tokens=256))
    assert (more["dtype"], more["max_model_len"], more["max_num_batched_tokens"]) == ("bfloat16", 128, 256)


def test_sampling_fields_keep_their_meaning():
    p = SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, top_k=0, stop=("\n",), seed=3, ignore_eos=True)
    assert sampling_kwargs(p) == {
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 0,  # vLLM 0.32: 0 disables top-k, as ours
        "stop": ["\n"],
        "seed": 3,
        "ignore_eos": True,
        "n": 1,
        "logprobs": None,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "min_p": 0.0,
        "min_tokens": 0,
        "logit_bias": None,
        "prompt_logprobs": None,
        "stop_token_ids": None,
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
        "allowed_token_ids": None,
    }
    assert sampling_kwargs(SamplingParams())["stop"] is None
    vllm_ext = SamplingParams(
        stop_token_ids=(5, 6), include_stop_str=True, skip_special_tokens=False, allowed_token_ids=(1, 2)
    )
    k = sampling_kwargs(vllm_ext)
    assert (k["stop_token_ids"], k["include_stop_str_in_output"], k["skip_special_tokens"]) == ([5, 6], True, False)
    assert k["allowed_token_ids"] == [1, 2]
    scoring = sampling_kwargs(SamplingParams(max_tokens=0, prompt_logprobs=1))
    assert (scoring["max_tokens"], scoring["prompt_logprobs"]) == (1, 1)  # vLLM needs one token; it is dropped
    extra = SamplingParams(n=3, logprobs=2, repetition_penalty=1.2, min_tokens=2, logit_bias={"7": -100})
    k = sampling_kwargs(extra)
    assert (k["n"], k["logprobs"], k["repetition_penalty"], k["min_tokens"], k["logit_bias"]) == (
        3,
        2,
        1.2,
        2,
        {7: -100},
    )


def test_the_sampling_payload_round_trips():
    from loraplex.experts.sampling import sampling_payload

    p = SamplingParams(stop=("a",), logit_bias={3: 1.5}, structured=("json_schema", '{"type": "object"}'), n=2)
    assert SamplingParams(**sampling_payload(p)) == p
    import json

    json.dumps(sampling_payload(p))  # crosses the Ray hop as plain data


FOLDS = [
    ("single", "a", None),
    ("base", None, None),
    ("stack", {"mode": "stack", "adapters": ["a", "b"]}, {"a": 1.0, "b": 1.0}),
    ("delta blend", {"mode": "blend", "weights": {"a": 0.7, "b": 0.3}}, {"a": 0.7, "b": 0.3}),
    ("logits blend", {"mode": "blend", "space": "logits", "weights": {"a": 0.7, "b": 0.3}}, None),
    ("moe top-2", {"mode": "moe", "top_k": 2, "weights": {"a": 0.6, "b": 0.2, "c": 0.2}}, {"a": 0.75, "b": 0.25}),
]


@pytest.mark.parametrize("name,spec,weights", FOLDS, ids=[f[0] for f in FOLDS])
def test_which_compositions_fold_into_one_adapter(name, spec, weights):
    got = composed_weights(parse_composition(spec))
    assert got == (None if weights is None else pytest.approx(weights))


def test_module_shapes_come_from_the_config_alone(tiny):
    shapes = module_shapes(str(tiny["base"]), ["q_proj", "down_proj"])
    assert shapes and all(n.endswith(("q_proj", "down_proj")) for n in shapes)
    assert all(isinstance(i, int) and isinstance(o, int) for i, o in shapes.values())


def _gateway(tiny, engines: dict[str, str]) -> Gateway:
    groups = [
        {"name": "g1", "adapters": ["a", "b"], "engine": engines["g1"]},
        {"name": "g2", "adapters": ["c"], "engine": engines["g2"]},
    ]
    return Gateway(AppArgs(base_model=str(tiny["base"]), adapter_roots=[str(tiny["roots"])], groups=groups))


LOGITS = {"mode": "blend", "space": "logits", "weights": {"a": 0.5, "b": 0.5}}


def test_a_logits_blend_goes_to_a_native_group(tiny):
    gw = _gateway(tiny, {"g1": "vllm", "g2": "native"})
    assert gw.group_for(parse_composition(LOGITS)) == "g2"  # g1 pins both adapters but runs vLLM
    assert gw.group_for(parse_composition({**LOGITS, "space": "delta"})) == "g1"
    both_native = _gateway(tiny, {"g1": "native", "g2": "native"})
    assert both_native.group_for(parse_composition(LOGITS)) == "g1"


def test_a_logits_blend_without_a_native_group_is_a_400_naming_the_groups(tiny):
    gw = _gateway(tiny, {"g1": "vllm", "g2": "vllm"})
    with pytest.raises(CompositionError, match=r"groups: g1 \(vllm\), g2 \(vllm\)\); use blend space 'delta'") as e:
        gw.group_for(parse_composition(LOGITS))
    assert e.value.status == 400


def test_vllm_request_ids_carry_the_clients_id_and_stay_unique():
    from loraplex.experts.vllm_engine import vllm_request_id

    a, b = vllm_request_id("req-7"), vllm_request_id("req-7")
    assert a.startswith("req-7-") and b.startswith("req-7-") and a != b
    assert len(vllm_request_id(None)) == 32

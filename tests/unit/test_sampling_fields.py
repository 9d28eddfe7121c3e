"""The OpenAI/vLLM sampling fields on the native engine, each against a reference computed by hand from PEFT's
logits without a KV cache: logprobs, prompt logprobs (echo), n, penalties, min_p, min_tokens, logit_bias and
structured output."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
import torch

from loraplex.experts.engine import Request
from loraplex.experts.errors import SamplingError
from loraplex.experts.logprobs import token_texts
from tests.unit.conftest import peft_model

PROMPT = "my order ORD-12345 never arrived"


@pytest.fixture(scope="module")
def ref(tiny):
    return peft_model(tiny)


def _logits(ref, ids: list[int], adapter: str | None) -> torch.Tensor:
    """Next-token logits after `ids` (full forward, no cache) under `adapter` (None: the base model)."""
    with torch.inference_mode():
        out = ref(input_ids=torch.tensor([ids]), adapter_names=[adapter or "__base__"])
    return out.logits[0, -1].float()  # [vocab]


def _req(comp=None, **kw):
    kw.setdefault("max_tokens", 8)
    return Request.from_json(PROMPT, comp, **kw)


def _greedy_by_hand(ref, tok, adapter, steps, process) -> list[int]:
    """Greedy decode where `process(logits, prompt_ids, output_ids)` edits each step's logits (the reference)."""
    prompt = tok(PROMPT)["input_ids"]
    out: list[int] = []
    for _ in range(steps):
        logits = process(_logits(ref, prompt + out, adapter), prompt, out)
        out.append(int(logits.argmax()))
    return out


def test_logprobs_are_the_model_distribution_with_top_alternatives(engine, ref):
    r = engine.generate([_req("a", logprobs=3, max_tokens=6, ignore_eos=True)])[0]
    prompt = engine.tokenizer(PROMPT)["input_ids"]
    assert len(r.logprobs) == len(r.token_ids) == 6
    for i, (tid, entry) in enumerate(zip(r.token_ids, r.logprobs)):
        lp = torch.log_softmax(_logits(ref, prompt + r.token_ids[:i], "a"), -1)
        assert entry.logprob == pytest.approx(float(lp[tid]), abs=1e-4)
        top_lp, top_ids = lp.topk(3)
        assert [v for _, v in entry.top] == pytest.approx(top_lp.tolist(), abs=1e-4)
        assert [t for t, _ in entry.top] == token_texts(engine.tokenizer, top_ids.tolist(), r.token_ids[:i])
        assert entry.top[0][1] == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the chosen token is the top one


def test_token_strings_concatenate_to_the_text_across_partial_characters(engine):
    """A character split over byte tokens: the pieces before the last read "", the last carries the character
    (vLLM's rule), so joining the logprob tokens gives the text."""
    tok = engine.tokenizer
    ids = tok("caf\u00e9 \u2713")["input_ids"]
    assert any(tok.decode([t]).endswith("\ufffd") for t in ids)  # the tiny BPE really splits these characters
    texts = [token_texts(tok, [t], ids[:i])[0] for i, t in enumerate(ids)]
    assert "".join(texts) == "caf\u00e9 \u2713"


def test_prompt_logprobs_score_every_prompt_token(engine, ref):
    """echo: entry t is log p(prompt[t] | prompt[:t]); the first token has none. max_tokens 0 = score only."""
    r = engine.generate([_req("b", prompt_logprobs=2, max_tokens=0)])[0]
    prompt = engine.tokenizer(PROMPT)["input_ids"]
    assert r.completion_tokens == 0 and r.text == "" and r.finish_reason == "length"
    assert len(r.prompt_logprobs) == len(prompt)
    assert r.prompt_logprobs[0].logprob is None and r.prompt_logprobs[0].top is None
    for t in range(1, len(prompt)):
        lp = torch.log_softmax(_logits(ref, prompt[:t], "b"), -1)
        assert r.prompt_logprobs[t].logprob == pytest.approx(float(lp[prompt[t]]), abs=1e-4)
        assert [v for _, v in r.prompt_logprobs[t].top] == pytest.approx(lp.topk(2).values.tolist(), abs=1e-4)
    # scored next to an ordinary request in one batch, with generation after the prompt
    both = engine.generate([_req("b", prompt_logprobs=0, max_tokens=3), _req("a", max_tokens=3)])
    alone = engine.generate([_req("a", max_tokens=3)])[0]
    assert [e.logprob for e in both[0].prompt_logprobs] == pytest.approx([e.logprob for e in r.prompt_logprobs])
    assert both[0].completion_tokens == 3 and both[1].text == alone.text


def test_n_choices_share_one_prefill_and_each_equals_its_solo_run(engine):
    kw = dict(temperature=1.3, max_tokens=8, ignore_eos=True)
    r = engine.generate([_req("a", n=3, seed=11, **kw)])[0]
    assert len(r.choices) == 3
    solo = [engine.generate([_req("a", seed=11 + k, **kw)])[0].text for k in range(3)]
    assert [c.text for c in r.choices] == solo  # choice k samples with seed + k
    assert len(set(solo)) > 1
    assert r.completion_tokens == 24
    greedy = engine.generate([_req("a", n=4, max_tokens=5)])[0]
    assert [c.text for c in greedy.choices] == [engine.generate([_req("a", max_tokens=5)])[0].text] * 4


def test_n_rows_count_against_the_row_budget(tiny):
    from loraplex.config.engine import EngineConfig
    from loraplex.experts.engine import Engine

    small = Engine.from_config(
        EngineConfig(base_model=str(tiny["base"]), adapter_roots=[str(tiny["roots"])], max_slots=2, max_batch_rows=6)
    )
    blend = {"mode": "blend", "weights": {"a": 1, "b": 1}, "space": "logits"}  # 3 rows per choice
    err, ok = small.generate_many([_req(blend, n=3, temperature=1.0), _req(blend, n=2, temperature=1.0)])
    assert isinstance(err, Exception) and "3 per choice x 3 sampled choices" in str(err)
    assert len(ok.choices) == 2


def _rep(rp):
    def f(logits, prompt, out):
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen[prompt + out] = True
        return torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)

    return f


def _freq_pres(fp, pp):
    def f(logits, prompt, out):
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float()
        return logits - fp * counts - pp * (counts > 0).float()

    return f


def _allowed(ids):
    def f(logits, prompt, out):
        keep = torch.full_like(logits, float("-inf"))
        keep[ids] = 0.0
        return logits + keep

    return f


def _bias(bias):
    def f(logits, prompt, out):
        logits = logits.clone()
        for t, b in bias.items():
            logits[t] += b
        return logits

    return f


PENALTY_CASES = [
    ("repetition", dict(repetition_penalty=1.8), _rep(1.8)),
    ("frequency", dict(frequency_penalty=1.5), _freq_pres(1.5, 0.0)),
    ("presence", dict(presence_penalty=2.0), _freq_pres(0.0, 2.0)),
    ("frequency+presence", dict(frequency_penalty=0.7, presence_penalty=-0.5), _freq_pres(0.7, -0.5)),
    ("logit_bias", dict(logit_bias={17: 3.0, 42: -100.0}), _bias({17: 3.0, 42: -100.0})),
    ("allowed_token_ids", dict(allowed_token_ids=[40, 41, 99, 150]), _allowed([40, 41, 99, 150])),
]


@pytest.mark.parametrize("name,fields,by_hand", PENALTY_CASES, ids=[c[0] for c in PENALTY_CASES])
def test_penalties_and_bias_follow_the_reference_formula(engine, ref, name, fields, by_hand):
    r = engine.generate([_req("a", max_tokens=12, ignore_eos=True, **fields)])[0]
    plain = engine.generate([_req("a", max_tokens=12, ignore_eos=True)])[0]
    want = _greedy_by_hand(ref, engine.tokenizer, "a", 12, by_hand)
    assert r.token_ids == want
    assert r.token_ids != plain.token_ids  # the field changed the output (the test would notice it ignored)


def test_the_stopping_token_has_a_logprob_entry(engine):
    """OpenAI and vLLM list the EOS that ended a completion; lm-evaluation-harness's echo scoring counts on it."""
    eos = engine.tokenizer.eos_token_id
    r = engine.generate([_req("a", logit_bias={eos: 100.0}, min_tokens=2, logprobs=1, max_tokens=20)])[0]
    assert r.finish_reason == "stop" and len(r.token_ids) == 2 and len(r.logprobs) == 3
    assert r.logprobs[-1].token == engine.tokenizer.decode([eos])


def test_min_tokens_holds_eos_back_and_logit_bias_pulls_it(engine):
    eos = engine.tokenizer.eos_token_id
    eager = engine.generate([_req("a", logit_bias={eos: 100.0}, max_tokens=20)])[0]
    assert eager.finish_reason == "stop" and eager.token_ids == [] and eager.completion_tokens == 1
    held = engine.generate([_req("a", logit_bias={eos: 100.0}, min_tokens=5, max_tokens=20)])[0]
    assert held.finish_reason == "stop" and len(held.token_ids) == 5 and held.completion_tokens == 6


def test_stop_token_ids_stop_like_eos_and_stop_strings_can_stay(engine):
    full = engine.generate([_req("a", max_tokens=10, ignore_eos=True)])[0]
    third = full.token_ids[2]
    cut = engine.generate([_req("a", max_tokens=10, ignore_eos=True, stop_token_ids=[third])])[0]
    first = full.token_ids.index(third)
    assert cut.finish_reason == "stop" and cut.token_ids == full.token_ids[:first]
    stop = full.text[3:5]
    kept = engine.generate([_req("a", max_tokens=10, ignore_eos=True, stop=[stop], include_stop_str=True)])[0]
    dropped = engine.generate([_req("a", max_tokens=10, ignore_eos=True, stop=[stop])])[0]
    assert kept.text == dropped.text + stop and kept.text.endswith(stop)


def test_skip_special_tokens_false_keeps_them_in_the_text(engine):
    pad = engine.tokenizer.pad_token_id
    kw = dict(max_tokens=3, ignore_eos=True, logit_bias={pad: 100.0})
    skipped = engine.generate([_req("a", **kw)])[0]
    kept = engine.generate([_req("a", skip_special_tokens=False, **kw)])[0]
    assert skipped.token_ids == kept.token_ids == [pad] * 3
    assert skipped.text == "" and kept.text == engine.tokenizer.pad_token * 3
    pieces: list[str] = []
    engine.generate([Request.from_json(PROMPT, "a", on_token=pieces.append, **kw)])
    assert pieces == ["", ""]  # a chunk per token without text (the last one ends the stream), as vLLM streams


def test_min_p_drops_tokens_below_its_share_of_the_top_probability(engine):
    """Every sampled token has p >= min_p x p_max under the (temperature 1) distribution; without min_p some do not."""

    def worst(**kw):
        out = []
        for seed in range(6):
            r = engine.generate(
                [_req("a", temperature=1.0, seed=seed, logprobs=1, max_tokens=10, ignore_eos=True, **kw)]
            )[0]
            out += [e.logprob - e.top[0][1] for e in r.logprobs]  # log(p / p_max)
        return min(out)

    assert worst(min_p=0.6) >= math.log(0.6) - 1e-5
    assert worst() < math.log(0.6)


SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["refund", "delivery", "other"]}, "urgent": {"type": "boolean"}},
    "required": ["label", "urgent"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("sampled", [False, True])
def test_json_schema_output_always_validates(engine, sampled):
    structured = ("json_schema", json.dumps(SCHEMA))
    kw = dict(temperature=1.0, seed=5, n=3) if sampled else {}
    r = engine.generate([_req("b", structured=structured, max_tokens=40, **kw)])[0]
    for c in r.choices:
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), SCHEMA)
        assert " " not in c.text  # compact JSON, as vLLM groups produce by default


def test_json_object_output_parses(engine):
    r = engine.generate(
        [
            _req(
                None,
                structured=("json_object", ""),
                max_tokens=60,
                logit_bias={engine.tokenizer.convert_tokens_to_ids("}"): 5.0},
            )
        ]
    )[0]
    assert r.finish_reason == "stop", r.text
    assert isinstance(json.loads(r.text), dict)


ERROR_CASES = [
    ("bias outside vocab", dict(logit_bias={10_000: 1.0}), "outside the vocabulary"),
    ("bad schema", dict(structured=("json_schema", '{"type": "nonsense"}')), "cannot be compiled"),
    ("max_tokens 0 without echo", dict(max_tokens=0), "0 only with echo"),
    ("min_tokens above max", dict(min_tokens=9, max_tokens=3), "min_tokens"),
    ("allowed outside vocab", dict(allowed_token_ids=[1, 99_999]), "allowed_token_ids token ids [99999]"),
    ("stop id outside vocab", dict(stop_token_ids=[99_999]), "stop_token_ids token ids [99999]"),
    ("empty allowed", dict(allowed_token_ids=[]), "must not be empty"),
]


@pytest.mark.parametrize("name,fields,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_sampling_fields_fail_that_request_only(engine, name, fields, match):
    try:
        bad = _req("a", **fields)
    except SamplingError as e:  # caught when the parameters are built
        assert match in str(e)
        return
    out = engine.generate_many([bad, _req("a", max_tokens=2)])
    assert isinstance(out[0], SamplingError) and match in str(out[0])
    assert out[1].completion_tokens == 2


def test_chain_refuses_n_and_echo(engine):
    chain = {
        "mode": "chain",
        "stages": [{"adapter": "a", "prompt": "{input}"}, {"adapter": "b", "prompt": "{previous}"}],
    }
    n2, echo, ok = engine.generate_many(
        [_req(chain, n=2, temperature=1.0), _req(chain, prompt_logprobs=1), _req(chain, max_tokens=2)]
    )
    assert isinstance(n2, SamplingError) and "chain" in str(n2)
    assert isinstance(echo, SamplingError) and "chain" in str(echo)
    assert len(ok.stages) == 2


def test_chain_constrains_and_scores_only_its_last_stage(engine):
    chain = {
        "mode": "chain",
        "stages": [{"adapter": "a", "prompt": "{input}"}, {"adapter": "b", "prompt": "{previous}"}],
    }
    structured = ("json_schema", json.dumps(SCHEMA))
    r = engine.generate([_req(chain, structured=structured, logprobs=0, max_tokens=40)])[0]
    first = engine.generate([_req("a", max_tokens=40)])[0]
    assert r.stages[0] == first.text  # the first stage ran free
    jsonschema.validate(json.loads(r.text), SCHEMA)
    assert r.finish_reason == "stop" and len(r.logprobs) == len(r.token_ids) + 1  # the EOS that ended it, too

"""The free-phrasing generator (issue 13): varied, deterministic, split-disjoint, answers still exact."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import jinja2
import pytest

from loraplex.demo import phrasing
from loraplex.demo.build import CHAT_TEMPLATE, DemoConfig, training_examples
from loraplex.demo.data import INTENTS, SENTIMENTS, TASKS, make_casual_message, make_examples
from loraplex.demo.free_phrasing import load_set


def _render_chat(messages: list[dict]) -> str:
    env = jinja2.Environment()
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=True
    )


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_and_balanced(task):
    a = phrasing.make_free_examples(task, 120, seed=3)
    assert a == phrasing.make_free_examples(task, 120, seed=3)
    assert a != phrasing.make_free_examples(task, 120, seed=4)
    if task != "entities":
        labels = INTENTS if task == "intent" else SENTIMENTS
        assert Counter(e.answer for e in a) == {label: 120 // len(labels) for label in labels}


@pytest.mark.parametrize("task", TASKS)
def test_many_distinct_instructions_and_layouts(task):
    rng = random.Random(0)
    train = {phrasing.instruction(task, rng, "train") for _ in range(3000)}
    dev = {phrasing.instruction(task, rng, "dev") for _ in range(3000)}
    assert len(train) >= 300  # "hundreds of instruction phrasings per task"
    # Parts are split, so whole dev instructions almost never occur in training (a keyword like
    # "intent" lower-cased from "INTENT" is the only way to meet).
    assert len(dev & train) <= 0.02 * len(dev)


def test_prompts_cover_the_styles_the_issue_names():
    prompts = [e.prompt for t in TASKS for e in phrasing.make_free_examples(t, 600, seed=0)]

    def share(pred):
        return sum(map(pred, prompts)) / len(prompts)

    assert share(lambda p: "Message: " not in p and not p.endswith("Answer:")) > 0.4  # no template cue
    assert share(lambda p: p.endswith("\n\nAnswer:")) > 0.25  # the chat template's cue (chat rows)
    for marker in ("Ticket", "Email:", "Note", "->", "=>", '"', "\u201c"):
        assert share(lambda p, m=marker: m in p) > 0.01, marker
    assert share(lambda p: (q := p.removesuffix("\n\nAnswer:")) == q.lower()) > 0.015
    assert share(lambda p: p.startswith(("Hi! ", "Hey, ", "Morning! ", "Quick one: "))) > 0.02


@pytest.mark.parametrize("task", TASKS)
def test_answers_stay_exact_in_the_prompt(task):
    for e in phrasing.make_free_examples(task, 400, seed=1):
        if task == "entities":
            got = json.loads(e.answer)
            for value in (got["order_id"], got["email"]):
                assert value is None or value in e.prompt  # ids and emails are never re-cased or misspelt
        assert e.answer == {"intent": e.intent, "sentiment": e.sentiment}.get(task, e.answer)


def test_chat_rows_render_like_the_chat_template():
    rows = [e for e in phrasing.make_free_examples("intent", 300, seed=2) if e.prompt.endswith("\n\nAnswer:")]
    assert rows
    for system in (None, "Answer briefly."):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "  where is my parcel?  "}
        ]
        assert _render_chat(messages) == "<s>" + phrasing.chat_prompt("  where is my parcel?  ", system)
    assert phrasing.chat_prompt("x\n\nAnswer:") == "x\n\nAnswer:"  # no second cue, as the template does


def test_dev_split_is_disjoint_from_training():
    train = {e.prompt for t in TASKS for e in phrasing.make_free_examples(t, 500, seed=0, split="train")}
    dev = {e.prompt for t in TASKS for e in phrasing.make_free_examples(t, 500, seed=0, split="dev")}
    assert not train & dev
    casual_train = {make_casual_message(random.Random(i), "train").text for i in range(300)}
    casual_dev = {make_casual_message(random.Random(i), "heldout").text for i in range(300)}
    assert not casual_train & casual_dev


def test_never_trains_on_the_hand_written_set():
    written = {r.prompt for r in load_set()}
    generated = {e.prompt for t in TASKS for e in phrasing.make_free_examples(t, 2000, seed=0)}
    generated |= {e.instruction for t in TASKS for e in phrasing.make_free_examples(t, 2000, seed=0)}
    assert not written & generated


def test_training_mix_has_templates_free_and_chat():
    cfg = DemoConfig(train_examples={"intent": 400, "sentiment": 400, "entities": 400})
    mix = training_examples("intent", cfg, seed=0)
    template = {e.prompt for e in make_examples("intent", 400 - round(400 * cfg.free_share), 0, "train")}
    n_template = sum(e.prompt in template for e in mix)
    assert len(mix) == 400 and n_template == 400 - round(400 * cfg.free_share)
    assert 0.1 < sum(e.prompt.endswith("\n\nAnswer:") and e.prompt not in template for e in mix) / 400 < 0.4


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: phrasing.make_free_examples("summary", 1, 0), "unknown task 'summary'"),
        (lambda: phrasing.make_free_examples("intent", 1, 0, split="heldout"), "unknown split 'heldout'"),
        (lambda: make_casual_message(random.Random(0), "dev"), "unknown split 'dev'"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _eight_grams(text: str) -> set[tuple[str, ...]]:
    out = set()
    for piece in re.split(r"\S+@\S+|ORD-\d+", text):  # ids and emails are data, not phrasing
        words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", piece.lower())
        out |= {tuple(words[i : i + 8]) for i in range(len(words) - 7)}
    return out


def test_training_parts_are_decontaminated_from_the_hand_written_set():
    """No eight-word run of the hand-written set occurs in any generated training request: shorter runs
    are ordinary phrases ("the order id and email"), longer ones mean a part copied a row."""
    written = set().union(*(_eight_grams(r.prompt) for r in load_set()))
    generated = [e.prompt for t in TASKS for e in phrasing.make_free_examples(t, 3000, seed=0)]
    generated += [e.prompt for t in TASKS for e in make_examples(t, 1000, 0, "train")]
    shared = {g for text in generated for g in _eight_grams(text) & written}
    assert not shared, sorted(shared)[:10]


def test_all_parts_is_train_plus_dev():
    rng = random.Random(0)
    dev = {phrasing.instruction("sentiment", rng, "dev") for _ in range(2000)}
    every = {phrasing.instruction("sentiment", rng, "all") for _ in range(6000)}
    train = {phrasing.instruction("sentiment", rng, "train") for _ in range(6000)}
    assert len(dev & every) >= 10 and len(every - train) > 0.2 * len(every)
    texts = {make_casual_message(random.Random(i), "train", every_part=True).text for i in range(400)}
    assert texts - {make_casual_message(random.Random(i), "train").text for i in range(400)}

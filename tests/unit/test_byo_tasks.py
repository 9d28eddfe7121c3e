"""The two "bring your own adapters" tasks: phrasing splits, labels derived from message cues, routing prompts.

No training here: these check the data the adapters are trained and evaluated on.
"""

from __future__ import annotations

import re

import pytest

from loraplex.demo import byo_tasks as bt
from loraplex.demo import data as demo_data
from loraplex.demo.data import ANSWER_CUE, MESSAGE_LABEL


def _instruction_of(prompt: str) -> str:
    """The instruction of a rendered prompt, whichever side of the message it sits on."""
    body = prompt.removesuffix(ANSWER_CUE)
    if body.startswith(MESSAGE_LABEL):
        return body.rsplit("\n\n", 1)[1]
    return body.split("\n\n", 1)[0]


def _product(example) -> str:
    """The product part of a summary answer ("<topic> about <product>")."""
    return example.answer.split(" about ", 1)[1]


@pytest.mark.parametrize("task", bt.BYO_TASKS)
def test_phrasings_are_plentiful_varied_and_disjoint(task):
    train, heldout = bt.instructions_for(task, "train"), bt.instructions_for(task, "heldout")
    assert len(set(train)) == len(train) >= 14
    assert len(set(heldout)) == len(heldout) >= 6
    assert not set(train) & set(heldout)
    normalized = {re.sub(r"\W+", " ", p.lower()).strip() for p in train + heldout}
    assert len(normalized) == len(train) + len(heldout)  # not just punctuation variants
    assert any(len(p.split()) <= 2 for p in train) and any(p.endswith("?") for p in train)  # terse + questions


@pytest.mark.parametrize("task", bt.BYO_TASKS)
def test_byo_phrasings_differ_from_the_demo_tasks(task):
    demo = {p for t in demo_data.TASKS for s in demo_data.SPLITS for p in demo_data.instructions_for(t, s)}
    assert not demo & set(bt.INSTRUCTIONS[task]["train"] + bt.INSTRUCTIONS[task]["heldout"])


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Hi, my blender won't turn on. This is urgent.", "urgent"),
        ("Please fix this ASAP, thanks.", "urgent"),
        ("We have an outage since this morning.", "urgent"),
        ("I'm blocked until the invoice is fixed.", "high"),
        ("There is a deadline on Friday.", "high"),
        ("No rush, but where is my order?", "low"),
        ("Just curious how refunds work.", "low"),
        ("Reply whenever you can.", "low"),
        ("Where is my order ORD-12345?", "normal"),
        ("I'm angry, this is unacceptable.", "normal"),  # strong sentiment is not priority
        ("I'm locked out of my account.", "normal"),  # "locked" is not "blocked": whole words only
        ("No rush, but it is blocking my work.", "high"),  # precedence: high beats low
        ("It's important, and honestly an emergency.", "urgent"),  # urgent beats high
    ],
)
def test_priority_is_a_function_of_cue_words(message, expected):
    assert bt.priority_of(message) == expected


@pytest.mark.parametrize("split", demo_data.SPLITS)
def test_priority_labels_match_the_message_and_are_balanced(split):
    examples = bt.make_byo_examples("priority", 400, seed=3, split=split)
    assert all(e.answer == bt.priority_of(e.message) for e in examples)
    counts = {p: sum(e.answer == p for e in examples) for p in bt.PRIORITIES}
    assert counts == {p: 100 for p in bt.PRIORITIES}


@pytest.mark.parametrize("split", demo_data.SPLITS)
@pytest.mark.parametrize("level", bt.PRIORITIES)
def test_every_cue_sentence_reads_as_its_level(level, split):
    sentences = bt.cue_sentences(level, split)
    assert sentences and all(bt.priority_of(s) == level for s in sentences)


def test_heldout_cue_sentences_are_unseen_but_use_the_same_cue_words():
    for level in bt.PRIORITIES:
        assert not set(bt.cue_sentences(level, "train")) & set(bt.cue_sentences(level, "heldout"))
    cue = re.compile("|".join(re.escape(c) for cues in bt.PRIORITY_CUES.values() for c in cues), re.IGNORECASE)
    heldout_words = {m.lower() for lv in bt.PRIORITIES for s in bt.cue_sentences(lv, "heldout") for m in cue.findall(s)}
    train_words = {m.lower() for lv in bt.PRIORITIES for s in bt.cue_sentences(lv, "train") for m in cue.findall(s)}
    assert heldout_words <= train_words  # an unseen cue word could not be learned


def test_demo_messages_carry_no_priority_cues():
    """Otherwise a demo message would not be 'normal' by default and the labels would be noisy."""
    messages = [
        e.message for t in demo_data.TASKS for s in demo_data.SPLITS for e in demo_data.make_examples(t, 300, 0, s)
    ]
    assert {bt.priority_of(m) for m in messages} == {"normal"}


@pytest.mark.parametrize("split", demo_data.SPLITS)
def test_summary_names_the_messages_topic_and_product(split):
    examples = bt.make_byo_examples("summary", 300, seed=1, split=split)
    for e in examples:
        topic, product = e.answer.split(" about ", 1)
        assert topic == bt.SUMMARY_TOPICS[e.intent]
        assert product in e.message  # copyable from the message
        assert 1 <= len(e.answer.split()) <= bt.SUMMARY_MAX_WORDS
    assert {e.intent for e in examples} == set(demo_data.INTENTS)


def test_heldout_summary_products_are_never_trained_on():
    """The summary adapter must copy heldout products, so none may appear among the train answers."""
    heldout = {_product(e) for e in bt.make_byo_examples("summary", 300, seed=0, split="heldout")}
    train = {_product(e) for e in bt.make_byo_examples("summary", 3000, seed=0, split="train")}
    assert len(heldout) >= 6 and not heldout & train
    assert not heldout & set(bt.TRAIN_EXTRA_PRODUCTS)
    assert len(train) > 1000  # mostly made-up names: too many to memorise


def test_summary_of_is_hand_checkable():
    assert bt.summary_of("billing", "coffee maker") == "billing question about coffee maker"
    assert (
        bt.summary_of("cancel_order", "noise cancelling earbuds")
        == "cancellation request about noise cancelling earbuds"
    )
    with pytest.raises(ValueError, match="unknown intent"):
        bt.summary_of("refund", "tent")


@pytest.mark.parametrize("task", bt.BYO_TASKS)
def test_heldout_examples_use_heldout_phrasings_and_pools(task):
    train = bt.make_byo_examples(task, 200, seed=0, split="train")
    heldout = bt.make_byo_examples(task, 200, seed=0, split="heldout")
    assert {e.instruction for e in heldout} <= set(bt.instructions_for(task, "heldout"))
    assert {e.instruction for e in train} <= set(bt.instructions_for(task, "train"))
    assert all(_instruction_of(e.prompt) == e.instruction for e in train + heldout)
    assert not {e.message for e in train} & {e.message for e in heldout}
    heldout_only_names = ("clara", "felix", "nora", "hugo", "iris")  # from the demo's heldout name pool
    assert any(name in e.message.lower() for e in heldout for name in heldout_only_names)
    assert not any(name in e.message.lower() for e in train for name in heldout_only_names)


@pytest.mark.parametrize("task", bt.BYO_TASKS)
def test_examples_are_deterministic_and_seeded(task):
    a = bt.make_byo_examples(task, 50, seed=7, split="train")
    assert a == bt.make_byo_examples(task, 50, seed=7, split="train")
    assert a != bt.make_byo_examples(task, 50, seed=8, split="train")


@pytest.mark.parametrize("task", bt.BYO_TASKS)
def test_routing_examples_are_eight_distinct_train_phrasings(task):
    prompts = bt.routing_examples(task)
    assert len(prompts) == 8 and len(set(prompts)) == 8
    instructions = [_instruction_of(p) for p in prompts]
    assert len(set(instructions)) == 8
    assert set(instructions) <= set(bt.instructions_for(task, "train"))
    assert all(p.endswith(ANSWER_CUE) for p in prompts)
    assert prompts == bt.routing_examples(task)


def test_routing_examples_repeat_phrasings_only_when_they_run_out():
    n_train = len(bt.instructions_for("priority", "train"))
    instructions = [_instruction_of(p) for p in bt.routing_examples("priority", n=n_train + 3)]
    assert len(set(instructions)) == n_train


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        bt.make_byo_examples("intent", 1, 0, "train")
    with pytest.raises(ValueError, match="unknown split"):
        bt.make_byo_examples("priority", 1, 0, "test")
    with pytest.raises(ValueError, match="n must be"):
        bt.routing_examples("summary", n=-1)


def test_make_message_options_leave_the_demo_streams_unchanged():
    """The options the BYO tasks added to the demo's message generator must not move the demo's RNG
    stream: the shipped corpus (every document drawn through that generator) still regenerates byte
    for byte."""
    from loraplex.demo import build

    assert build.generate_corpus_text() == build.CORPUS_PATH.read_text(encoding="utf-8")


def test_make_message_options():
    import random

    plain = demo_data.make_message(random.Random(5), "train", intent="billing")
    assert plain.intent == "billing"
    cued = demo_data.make_message(random.Random(5), "train", intent="billing", extra=("This is urgent.",))
    assert "This is urgent." in cued.text and "This is urgent." not in plain.text
    named = demo_data.make_message(
        random.Random(5),
        "heldout",
        intent="reset_password",
        product="zorbo lamp",
        product_sentences=("Product: {product}.",),
    )
    assert named.product == "zorbo lamp" and "Product: zorbo lamp." in named.text  # no product slot in the clause
    with pytest.raises(ValueError, match="unknown split"):
        demo_data.make_message(random.Random(5), "dev")
    with pytest.raises(ValueError, match="unknown intent"):
        demo_data.make_message(random.Random(5), "train", intent="refund")

"""The hand-written free-phrasing set: its shape, valid gold answers, styles unlike the training template,
and the scoring rule (entities: both fields right)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from loraplex.demo.data import ANSWER_CUE, INTENTS, MESSAGE_LABEL, SENTIMENTS, TASKS
from loraplex.demo.free_phrasing import is_correct, load_set, top_adapter


def test_the_set_has_40_hand_written_requests_per_task_with_valid_gold_answers():
    rows = load_set()
    assert Counter(r.task for r in rows) == {t: 40 for t in TASKS}
    assert len({r.id for r in rows}) == len(rows) and len({r.prompt for r in rows}) == len(rows)
    for r in rows:
        if r.task == "intent":
            assert r.answer in INTENTS, r
        elif r.task == "sentiment":
            assert r.answer in SENTIMENTS, r
        else:
            assert set(json.loads(r.answer)) == {"order_id", "email"}, r
            assert json.loads(r.answer)["order_id"] is None or json.loads(r.answer)["order_id"] in r.prompt
        assert MESSAGE_LABEL not in r.prompt and ANSWER_CUE not in r.prompt  # not the training template
    assert all(sum(r.answer == a for r in rows) >= 3 for a in (*INTENTS, *SENTIMENTS))  # every label is asked


CASES = [
    ("exact after trim", "intent", " billing\n", "billing", True),
    ("other label", "intent", "billing_issue", "billing", False),
    (
        "entities key order free",
        "entities",
        '{"email": null, "order_id": "ORD-1"}',
        '{"order_id": "ORD-1", "email": null}',
        True,
    ),
    (
        "entities one field wrong",
        "entities",
        '{"order_id": "ORD-1", "email": "x@y"}',
        '{"order_id": "ORD-1", "email": null}',
        False,
    ),
    ("entities not json", "entities", "ORD-1", '{"order_id": "ORD-1", "email": null}', False),
]


@pytest.mark.parametrize("name,task,output,answer,want", CASES, ids=[c[0] for c in CASES])
def test_scoring(name, task, output, answer, want):
    assert is_correct(task, output, answer) is want


def test_top_adapter():
    assert top_adapter({"weights": {"intent": 0.53, "entities": 0.47}}) == "intent"
    assert top_adapter({"weights": {}}) is None

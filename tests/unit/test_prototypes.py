"""The prototype head beside the trained router: add and remove classes, the gate keeps trained-class accuracy,
a prototype class clears the confidence floor on unseen phrasings, references survive save/load, reservoir bounds.

The featurizer is synthetic but shaped like the real one's problem: a prompt is a task instruction
(a task direction plus per-phrasing variation) and a customer message (a large random vector shared
by every task), so raw cosine is dominated by the message.
"""

from __future__ import annotations

import random

import pytest
import torch

from loraplex.router.dataset import RoutingData
from loraplex.router.fitting import fit_router_on_data
from loraplex.router.policy import PolicyConfig
from loraplex.router.prototypes import ExampleBank, PrototypeHead, PrototypeSpace
from loraplex.router.reservoir import Reservoir
from loraplex.router.router import Router
from loraplex.router.training import TrainConfig

DIM, TASKS, PHRASINGS = 48, 5, 12  # phrasings 0-7 are "train", 8-11 held out
TRAINED, NEW = ("t0", "t1", "t2"), ("t3", "t4")


class TaskFeat:
    """`"t{task} p{phrasing} m{message}"` -> task direction + phrasing variation + a large message vector
    (messages vary in a 16-d subspace, as customer texts vary in topic, names and products)."""

    dim = DIM

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.task = torch.randn(TASKS, DIM, generator=g)  # [tasks, dim]
        self.phrase = 0.5 * torch.randn(TASKS, PHRASINGS, DIM, generator=g)  # [tasks, phrasings, dim]
        basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=g)).Q[:, :16]  # [dim, 16]: what messages vary in
        self.message = 6.0 * torch.randn(2000, 16, generator=g) @ basis.T  # [messages, dim]

    def encode(self, texts):
        rows = []
        for t in texts:
            task, phrasing, message = (int(w[1:]) for w in t.split())
            rows.append(self.task[task] + self.phrase[task, phrasing] + self.message[message])
        return torch.stack(rows)  # [batch, dim]

    def spec(self):
        return {"kind": "synthetic"}


def prompts(task: int, n: int, phrasings: range, messages: range, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"t{task} p{rng.choice(phrasings)} m{rng.choice(messages)}" for _ in range(n)]


TRAIN_P, HELD_P = range(0, 8), range(8, PHRASINGS)
TRAIN_M, HELD_M = range(0, 1000), range(1000, 2000)


@pytest.fixture(scope="module")
def trained():
    feat = TaskFeat()
    texts, rows = [], []
    for i in range(len(TRAINED)):
        texts += prompts(i, 300, TRAIN_P, TRAIN_M, seed=i)
        rows += [i] * 300
    targets = torch.nn.functional.one_hot(torch.tensor(rows), len(TRAINED)).float()
    data = RoutingData(texts, targets, list(TRAINED))
    return fit_router_on_data(data, feat, TrainConfig(epochs=15, hidden=32), PolicyConfig(), progress=False).router


def examples_bank(router: Router, n: int = 8) -> ExampleBank:
    bank = ExampleBank()
    for name in NEW:
        bank.set(name, router.featurizer.encode(prompts(int(name[1:]), n, TRAIN_P, TRAIN_M, seed=50)))
    return bank


def top1(decisions) -> list[str]:
    return [max(d.probs, key=d.probs.get) for d in decisions]


def accuracy(router: Router, head, task: int) -> float:
    texts = prompts(task, 200, HELD_P, HELD_M, seed=100 + task)
    return sum(p == f"t{task}" for p in top1(router.route(texts, head=head))) / len(texts)


def test_adding_prototypes_keeps_trained_accuracy_and_routes_the_new_classes(trained):
    head = trained.prototype_head(examples_bank(trained))
    assert head.prototypes == list(NEW) and head.counts == {"t3": 8, "t4": 8}
    for task in range(len(TRAINED)):
        before = sum(p == f"t{task}" for p in top1(trained.route(prompts(task, 200, HELD_P, HELD_M, 100 + task))))
        assert accuracy(trained, head, task) >= before / 200 - 0.01  # at most 1 point lost
    for task in (3, 4):
        texts = prompts(task, 200, HELD_P, HELD_M, seed=100 + task)
        decisions = trained.route(texts, head=head)
        assert sum(p == f"t{task}" for p in top1(decisions)) / 200 >= 0.95
        confident = [d for d in decisions if d.weights == {f"t{task}": 1.0}]
        assert len(confident) / 200 >= 0.9  # over the 0.6 floor: hard routed, no fallback blend
        assert all(d.head == "prototype" for d in confident)


def test_whitening_is_what_separates_tasks_under_a_shared_message():
    """Raw cosine: the message decides (a task's nearest centroid is a coin toss); whitened: the task does."""
    feat = TaskFeat()
    refs = {f"t{i}": feat.encode(prompts(i, 128, TRAIN_P, TRAIN_M, seed=i)) for i in range(3)}
    query = feat.encode(prompts(1, 200, HELD_P, HELD_M, seed=7))

    def nearest_is_own(space: PrototypeSpace) -> float:
        cents = torch.stack([space.centroid(refs[n]) for n in refs])  # [3, dim]
        return float(((space.embed(query) @ cents.T).argmax(-1) == 1).float().mean())

    assert nearest_is_own(PrototypeSpace(refs)) >= 0.95
    assert nearest_is_own(PrototypeSpace(None)) < nearest_is_own(PrototypeSpace(refs)) - 0.1


def test_removing_an_adapter_removes_it_from_routing(trained):
    bank = examples_bank(trained)
    bank.remove("t3")
    head = trained.prototype_head(bank, unavailable=["t1"])  # t1 deleted from the roots, t3's examples gone
    assert head.trained == ["t0", "t2"] and head.prototypes == ["t4"]
    for task in (1, 3):
        for d in trained.route(prompts(task, 50, HELD_P, HELD_M, seed=task), head=head):
            assert set(d.probs) == {"t0", "t2", "t4"} and not {"t1", "t3"} & set(d.weights)
    only_new = trained.prototype_head(examples_bank(trained), unavailable=list(TRAINED))
    decisions = trained.route(prompts(0, 20, HELD_P, HELD_M, seed=3), head=only_new)
    assert all(set(d.weights) <= {"t3", "t4"} for d in decisions)  # nothing trained left: prototypes only
    nothing = trained.prototype_head(ExampleBank(), unavailable=list(TRAINED))
    assert all(d.mode == "base" for d in trained.route(["t0 p0 m0"], head=nothing))


def test_examples_of_a_trained_class_are_references_not_a_new_class(trained):
    bank = ExampleBank({"t1": trained.featurizer.encode(prompts(1, 8, TRAIN_P, TRAIN_M, seed=9))})
    head = trained.prototype_head(bank)
    assert head.prototypes == [] and len(head) == 0
    d = trained.route(["t1 p9 m1500"], head=head)[0]
    assert d.head == "trained" and set(d.probs) == set(TRAINED)


def test_references_survive_save_and_load(trained, tmp_path):
    assert set(trained.references) == set(TRAINED) and all(len(f) == 128 for f in trained.references.values())
    trained.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r", featurizer=trained.featurizer)
    assert all(torch.equal(loaded.references[n], trained.references[n]) for n in TRAINED)
    bank = examples_bank(trained)
    a, b = trained.prototype_head(bank), loaded.prototype_head(bank)
    x = trained.featurizer.encode(prompts(3, 10, HELD_P, HELD_M, seed=1))
    probs = torch.full((10, 3), 1 / 3)
    torch.testing.assert_close(a.combine(x, probs)[0], b.combine(x, probs)[0])


def test_gate_formula_by_hand():
    """One trained class centroid e0, one prototype centroid e1, identity space (no references)."""
    space = PrototypeSpace(None)
    head = PrototypeHead(
        space, {"t": torch.tensor([[1.0, 0.0]])}, ExampleBank({"n": torch.tensor([[0.0, 1.0]])}), ["t"]
    )
    assert head.threshold == pytest.approx(0.85)  # no references: the fixed bar on the prototype score
    x = torch.tensor([[0.6, 0.8]])  # cosine 0.8 to the prototype
    probs, gate = head.combine(x, torch.tensor([[1.0]]))
    want = torch.sigmoid(torch.tensor((0.8 - 0.85) / 0.01))
    torch.testing.assert_close(gate, want.reshape(1))
    torch.testing.assert_close(probs, torch.tensor([[1 - float(want), float(want)]]))


BANK_CASES = [
    ("not a matrix", lambda b: b.set("x", torch.zeros(3)), "must be \\[examples, dim\\]"),
    ("other width", lambda b: b.set("y", torch.zeros(2, 5)), "this bank is 4-d"),
]


@pytest.mark.parametrize("name,change,match", BANK_CASES, ids=[c[0] for c in BANK_CASES])
def test_example_bank_errors(name, change, match):
    bank = ExampleBank({"a": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=match):
        change(bank)


def test_example_bank_add_replace_remove():
    bank = ExampleBank({"a": torch.ones(2, 4)})
    bank.set("a", torch.ones(5, 4))
    bank.set("b", torch.ones(1, 4))
    assert bank.counts() == {"a": 5, "b": 1}
    bank.set("b", torch.ones(0, 4))  # zero rows: gone
    bank.remove("a")
    assert len(bank) == 0 and "a" not in bank


def test_reservoir_is_bounded_and_uniform():
    res = Reservoir(capacity=10, max_adapters=2, seed=1)
    kept_at: list[int] = []
    for i in range(1000):
        slot = res.slot("a")
        if slot is not None:
            res.put("a", slot, torch.tensor([float(i)]))
            kept_at.append(i)
    assert res.counts() == {"a": 10} and res.seen() == {"a": 1000}
    assert len(kept_at) < 10 + 10 * 7  # embedded ~ k * (1 + ln(n/k)) = 56 times, not 1000
    final = sorted(int(v) for v in res.bank().tensors()["a"].flatten())
    assert len(final) == 10 and sum(v >= 500 for v in final) in range(2, 9)  # a uniform sample, not the last 10
    assert res.slot("b") == 0 and res.slot("c") is None  # max_adapters: a third adapter is not sampled
    res.forget("a")
    res.put("a", 3, torch.tensor([1.0]))  # a sample in flight when the adapter was removed: dropped
    assert "a" not in res.counts() and res.bank(min_examples=1).names == []


def test_reservoir_uniformity_over_many_runs():
    """Every one of n items ends in the sample with probability k/n (algorithm R)."""
    hits = torch.zeros(50)
    for seed in range(400):
        res = Reservoir(capacity=5, seed=seed)
        for i in range(50):
            slot = res.slot("a")
            if slot is not None:
                res.put("a", slot, torch.tensor([float(i)]))
        for v in res.bank().tensors()["a"].flatten():
            hits[int(v)] += 1
    share = hits / 400  # expected 5 / 50 = 0.1 for every item
    assert float(share.min()) > 0.05 and float(share.max()) < 0.15

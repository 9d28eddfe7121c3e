"""Training the router on a user's own labelled prompts: JSONL parsing, split, early stopping, calibration,
the held-out report, the `base` class, and the CLI end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loraplex.experts.errors import DatasetError
from loraplex.router.dataset import BASE, load_jsonl, parse_lines, stratified_split
from loraplex.router.fitting import fit_router_on_data
from loraplex.router.policy import PolicyConfig, decide
from loraplex.router.report import expected_calibration_error, routing_report
from loraplex.router.router import Router
from loraplex.router.training import TrainConfig, calibrate_temperature, train_router

ROOT = Path(__file__).resolve().parents[2]
AVAILABLE = ["billing", "support/intent", "sentiment"]


def L(**obj) -> str:
    return json.dumps(obj)


GOOD = [L(prompt=f"bill {i}", adapter="billing") for i in range(3)] + [
    L(prompt=f"help {i}", adapter="support/intent") for i in range(3)
]

# name, lines, message fragment
CASES = [
    ("not JSON", GOOD + ["{oops"], "data:7: not valid JSON"),
    ("not an object", GOOD + ["[1]"], "data:7: each line must be a JSON object, got list"),
    ("empty prompt", GOOD + [L(prompt="  ", adapter="billing")], "data:7: 'prompt' must be a non-empty string"),
    ("both labels", GOOD + [L(prompt="x", adapter="billing", weights={"billing": 1})], "give exactly one of 'adapter'"),
    ("no label", GOOD + [L(prompt="x")], "data:7: give exactly one of"),
    ("bad weights", GOOD + [L(prompt="x", weights={"billing": -1})], "finite numbers >= 0, not all zero"),
    ("zero weights", GOOD + [L(prompt="x", weights={"billing": 0})], "not all zero"),
    ("unknown field", GOOD + [L(prompt="x", adapter="billing", label=3)], "unknown field(s) ['label']"),
    (
        "unknown adapter",
        GOOD + [L(prompt=f"q{i}", adapter="nope") for i in range(2)],
        "adapter(s) ['nope'] are not in the adapter roots; "
        "available adapters: ['billing', 'sentiment', 'support/intent']",
    ),
    ("empty class", GOOD + [L(prompt="only one", adapter="sentiment")], "class 'sentiment' has 1 distinct prompt(s)"),
    (
        "duplicates only",
        [L(prompt="same", adapter="billing")] * 9 + [L(prompt="other", adapter="sentiment")] * 9,
        "almost only duplicates: 16 repeated lines, 2 distinct",
    ),
    ("one class", [L(prompt=f"b{i}", adapter="billing") for i in range(5)], "a router needs at least 2 classes"),
    ("empty file", [], "holds no examples"),
]


@pytest.mark.parametrize("name,lines,match", CASES, ids=[c[0] for c in CASES])
def test_bad_data_is_refused_with_every_problem(name, lines, match):
    with pytest.raises(DatasetError) as e:
        parse_lines(lines, AVAILABLE)
    assert match in str(e.value) and e.value.status == 400


def test_all_problems_are_reported_at_once(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(GOOD + ["{oops", L(prompt="", adapter="billing"), L(prompt="a", adapter="zz")]))
    with pytest.raises(DatasetError) as e:
        load_jsonl(path, AVAILABLE)
    assert len(e.value.problems) == 4  # bad JSON, empty prompt, unknown adapter, class 'zz' too small
    assert all(p.startswith(("d.jsonl:", "adapter(s)", "class")) for p in e.value.problems)


def test_parsing_soft_labels_base_and_duplicates():
    lines = GOOD + [
        L(prompt="hello there", adapter=None),
        L(prompt="hi", adapter=None),
        L(prompt="both", weights={"billing": 3, "support/intent": 1}),
        GOOD[0],  # an exact repeat is dropped
    ]
    d = parse_lines(lines, AVAILABLE)
    assert d.experts == [BASE, "billing", "support/intent"] and d.duplicates == 1 and len(d.texts) == 9
    assert d.targets[d.texts.index("both")].tolist() == [0.0, 0.75, 0.25]
    assert d.labels[d.texts.index("hi")] == 0 and d.labels[d.texts.index("both")] == 1


def test_jsonl_round_trip(tmp_path):
    d = parse_lines(
        GOOD
        + [
            L(prompt="x", weights={"billing": 1, "support/intent": 1}),
            L(prompt="n", adapter=None),
            L(prompt="m", adapter=None),
        ],
        AVAILABLE,
    )
    d.write_jsonl(tmp_path / "d.jsonl")
    back = load_jsonl(tmp_path / "d.jsonl", AVAILABLE)
    assert back.texts == d.texts and torch.equal(back.targets, d.targets) and back.experts == d.experts


def test_stratified_split_holds_out_every_class():
    d = parse_lines(
        [L(prompt=f"a{i}", adapter="billing") for i in range(10)]
        + [L(prompt=f"b{i}", adapter="sentiment") for i in range(5)],
        AVAILABLE,
    )
    train, val = stratified_split(d, 0.2, seed=0)
    assert sorted(train + val) == list(range(15)) and not set(train) & set(val)
    assert sorted(d.labels[i] for i in val) == [0, 0, 1]  # 2 of 10 and 1 of 5
    assert stratified_split(d, 0.2, seed=0) == (train, val)  # seeded


def test_report_numbers_by_hand():
    experts = ["a", "b"]
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    targets = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    r = routing_report(logits, targets, experts)
    assert r["accuracy"] == 0.75 and r["confusion"] == [[2, 0], [1, 1]]
    assert r["per_adapter"]["a"] == {"precision": round(2 / 3, 4), "recall": 1.0, "support": 2}
    assert r["per_adapter"]["b"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert r["expert_share"] == {"a": 0.75, "b": 0.25}
    # ECE by hand, 10 bins: {0.9} acc 1, {0.8} acc 1, {0.7} acc 1, {0.6} acc 0 -> (0.1 + 0.2 + 0.3 + 0.6) / 4
    assert math.isclose(r["ece"], (0.1 + 0.2 + 0.3 + 0.6) / 4, abs_tol=1e-4)
    assert math.isclose(expected_calibration_error(torch.tensor([[0.5, 0.5]]), torch.tensor([0])), 0.5)


def test_calibration_recovers_a_known_temperature():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 4) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    targets = torch.nn.functional.one_hot(labels, 4).float()
    t = calibrate_temperature(true_logits * 3.0, targets)  # an overconfident net: logits 3x too large
    assert 2.6 < t < 3.4


def _blobs(n, seed, dim=8, k=3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:k] * 4
    labels = torch.arange(n) % k
    x = centres[labels] + torch.randn(n, dim, generator=g)
    return x, torch.nn.functional.one_hot(labels, k).float()


def test_early_stopping_returns_the_best_held_out_epoch():
    x, y = _blobs(60, 0)
    xv, yv = _blobs(30, 1)
    yv_noisy = yv.roll(1, dims=1)  # held-out labels the net can only get worse on: best epoch is early
    net, history = train_router(x, y, TrainConfig(epochs=60, patience=3, hidden=16), progress=False, val=(xv, yv_noisy))
    best = [h for h in history if h.get("best")]
    assert len(best) == 1 and len(history) <= best[0]["epoch"] + 4 < 60
    with torch.no_grad():
        from loraplex.router.losses import soft_cross_entropy

        assert math.isclose(float(soft_cross_entropy(net(xv), yv_noisy)), best[0]["val_ce"], abs_tol=1e-4)


def test_the_base_class_routes_to_the_base_model():
    experts = [BASE, "a", "b"]
    top2 = PolicyConfig(top_k=2, confidence_floor=0.0)
    mixed, adapters_only = decide(torch.tensor([[2.0, 1.0, -9.0], [-9.0, 2.0, 1.0]]), experts, top2)
    # base + a: base's share is "no delta", so a keeps its own weight in a delta blend (sum < 1)
    w_a = math.exp(1) / (math.exp(2) + math.exp(1))
    assert mixed.composition() == {"mode": "blend", "weights": {"a": pytest.approx(w_a, abs=1e-4)}, "space": "delta"}
    assert math.isclose(mixed.base_weight, 1 - w_a, abs_tol=1e-4)
    assert adapters_only.composition()["mode"] == "moe" and set(adapters_only.weights) == {"a", "b"}
    alone = decide(torch.tensor([[9.0, 0, 0]]), experts, PolicyConfig(top_k=1))[0]
    assert alone.mode == "base" and alone.composition() is None and not alone.fallback


class _Words:
    """A featurizer that counts keywords: cheap, deterministic, enough to learn from."""

    dim = 4
    words = ("bill", "help", "angry", "hello")

    def encode(self, texts):
        return torch.tensor([[float(w in t) * 3 for w in self.words] for t in texts])

    def spec(self):
        return {"kind": "sentence", "path": "unused"}


def test_fit_on_data_trains_calibrates_reports_and_saves(tmp_path):
    lines = []
    for i in range(20):
        lines += [
            L(prompt=f"my bill number {i}", adapter="billing"),
            L(prompt=f"please help me {i}", adapter="support/intent"),
            L(prompt=f"so angry today {i}", adapter="sentiment"),
            L(prompt=f"hello {i}", adapter=None),
        ]
    data = parse_lines(lines, AVAILABLE)
    result = fit_router_on_data(
        data, _Words(), TrainConfig(epochs=60, hidden=16, lr=2e-2), PolicyConfig(), 0.25, progress=False
    )
    rep = result.report
    assert rep["accuracy"] == 1.0 and rep["n_train"] == 60 and rep["n_validation"] == 20
    assert rep["report_split"].startswith("validation") and rep["calibration_temperature"] > 0
    assert set(rep["per_adapter"]) == {BASE, "billing", "sentiment", "support/intent"}
    result.router.save(tmp_path / "r")
    back = Router.load(tmp_path / "r", featurizer=_Words())
    assert back.calibration == result.router.calibration
    got = [d.composition() for d in back.route(["a bill question", "hello", "help please"])]
    assert got[0] == {"mode": "moe", "top_k": 1, "weights": {"billing": 1.0}} and got[1] is None
    assert got[2]["weights"] == {"support/intent": 1.0}


def test_cli_refuses_bad_data_before_loading_any_model(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(GOOD + [L(prompt="z", adapter="missing")]))
    roots = tmp_path / "adapters"
    for name in ("billing", "support/intent"):
        (roots / name).mkdir(parents=True)
        (roots / name / "adapter_config.json").write_text("{}")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train_router.py"),
            "--data",
            str(tmp_path / "d.jsonl"),
            "--adapter-roots",
            str(roots),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert (
        "adapter(s) ['missing'] are not in the adapter roots; available adapters: ['billing', 'support/intent']"
        in out.stderr
    )
    assert not (tmp_path / "r").exists()


def test_cli_trains_on_a_jsonl_file_and_writes_router_report_and_plot(tmp_path):
    """The real sentence featurizer (packaged MiniLM, offline), a small file, every artefact on disk."""
    roots = tmp_path / "adapters"
    for name in ("billing", "support/intent"):
        (roots / name).mkdir(parents=True)
        (roots / name / "adapter_config.json").write_text("{}")
    lines = [L(prompt=f"Why was my card charged twice for order {i}?", adapter="billing") for i in range(12)]
    lines += [
        L(prompt=f"The app crashes when I open settings, attempt {i}", adapter="support/intent") for i in range(12)
    ]
    lines += [L(prompt=f"good morning number {i}", adapter=None) for i in range(6)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    out = tmp_path / "router"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train_router.py"),
        "--data",
        str(tmp_path / "d.jsonl"),
        "--adapter-roots",
        str(roots),
        "--out",
        str(out),
        "--epochs",
        "30",
        "--lr",
        "1e-2",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["experts"] == [BASE, "billing", "support/intent"] and report["accuracy"] == 1.0
    assert (out / "confusion.png").stat().st_size > 1000
    cfg = json.loads((out / "router.json").read_text())
    assert cfg["experts"] == report["experts"] and cfg["calibration_temperature"] == pytest.approx(
        report["calibration_temperature"], abs=1e-3
    )

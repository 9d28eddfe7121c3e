"""Route to a new adapter from a few examples over real HTTP: register with routing_examples, `auto` routes an
unseen paraphrase to it at once, the trained tasks keep theirs, an ingress restart keeps it, delete removes it."""

from __future__ import annotations

import shutil
import time

import httpx
import ray

from loraplex.demo.data import format_prompt, make_examples
from tests.integration.conftest import DEMO

EXAMPLE_INSTRUCTIONS = (  # what a user would paste: 8 prompts of their new "ticket priority" task
    "How urgent is this ticket? Answer low, normal, high or urgent.",
    "Rate the priority of this support request.",
    "Priority level for this message?",
    "Assign a priority (low/normal/high/urgent) to the ticket below.",
    "Triage: how quickly must we respond to this?",
    "What priority should this ticket get?",
    "Set the ticket priority.",
    "Classify the urgency of the customer's request.",
)
UNSEEN = ("Tag the severity of this ticket.", "Which queue: urgent, high, normal or low?")


def _messages(n: int, split: str, seed: int) -> list[str]:
    return [e.message for e in make_examples("intent", n, seed, split)]


def _route(server: str, prompt: str) -> dict:
    r = httpx.post(f"{server}/v1/route", json={"prompt": prompt}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["routing"]


def _wait_ingress(server: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.post(f"{server}/v1/route", json={"prompt": "hello"}, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"ingress at {server} did not come back within {timeout_s} s")


def test_register_with_examples_routes_paraphrases_survives_restart_and_delete_removes_it(server, roots):
    _, imports = roots
    shutil.copytree(DEMO / "adapters" / "entities", imports / "prio")  # weights do not matter for routing
    train_msgs = _messages(8, "train", 3)
    examples = [format_prompt(i, m, k % 2 == 0) for k, (i, m) in enumerate(zip(EXAMPLE_INSTRUCTIONS, train_msgs))]
    paraphrases = [format_prompt(UNSEEN[k % 2], m, k % 3 == 0) for k, m in enumerate(_messages(6, "heldout", 9))]
    assert all(_route(server, p)["weights"] != {"team/priority": 1.0} for p in paraphrases[:2])

    r = httpx.post(
        f"{server}/v1/adapters",
        json={"name": "team/priority", "source": str(imports / "prio"), "routing_examples": examples},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    assert r.json()["routing_examples"] == 8
    routed = [_route(server, p) for p in paraphrases]  # at once: no retraining, no reload call
    assert sum(x["weights"] == {"team/priority": 1.0} for x in routed) >= 5, routed
    assert all(x["head"] == "prototype" for x in routed if x["weights"] == {"team/priority": 1.0})
    for task in ("intent", "sentiment", "entities"):  # the trained tasks keep their routes
        e = make_examples(task, 1, seed=11, split="heldout")[0]
        assert _route(server, e.prompt)["weights"] == {task: 1.0}
    r = httpx.post(
        f"{server}/v1/completions", json={"temperature": 0, "model": "auto", "prompt": paraphrases[0], "max_tokens": 4}
    )
    assert r.status_code == 200 and r.json()["routing"]["weights"] == {"team/priority": 1.0}, r.text
    info = httpx.get(f"{server}/v1/adapters/team/priority", timeout=30).json()
    assert info["routing"] == {"trained": False, "routing_examples": 8, "traffic_examples": 0}, info

    victim = next(  # a restarted ingress reads the examples back from the adapter folder
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "loraplex" in a["name"] and "RouterIngress" in a["name"]
    )
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    _wait_ingress(server)
    assert _route(server, paraphrases[0])["weights"] == {"team/priority": 1.0}

    assert httpx.delete(f"{server}/v1/adapters/team/priority", timeout=30).status_code == 200
    after = _route(server, paraphrases[0])
    assert "team/priority" not in after["probs"] and "team/priority" not in after["weights"]
    assert httpx.get(f"{server}/v1/adapters/team/priority", timeout=30).status_code == 404

"""Chaos: closed-loop clients on a running app while a random expert replica actor is killed every few seconds.

Every response must be 200 or 503 (the ingress retries a dead replica, then sheds with 503 + Retry-After);
a connection error, timeout or any other status is a lost or unexpected request.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import yaml

from loraplex.bench.workloads import demo_prompts

EXPECTED = ("200", "503")


def groups_with_replicas(config: Path, replicas: int) -> list[dict]:
    """The expert groups of a Serve YAML's first application, each with `replicas` replicas (a kill must leave one)."""
    groups = yaml.safe_load(Path(config).read_text())["applications"][0]["args"]["groups"]
    for g in groups:
        g["num_replicas"] = replicas
    return groups


def run_chaos(
    url: str, minutes: float, clients: int, kill_every: float, seed: int
) -> tuple[dict[str, int], list[dict]]:
    """Load for `minutes` while killing one `expert_` actor every `kill_every` s; (count per outcome, kills).

    Outcomes are status codes as strings, or `lost:<exception>` for requests that got no response.
    """
    import httpx
    import ray

    rng = random.Random(seed)
    pool = demo_prompts(20, seed)
    outcomes: list[str] = []
    kills: list[dict] = []
    stop = threading.Event()

    def client(i: int) -> None:
        r = random.Random(i)
        with httpx.Client(timeout=90) as c:
            while not stop.is_set():
                task, prompt = r.choice(pool)
                try:
                    outcomes.append(
                        str(
                            c.post(
                                f"{url}/v1/completions",
                                json={"temperature": 0, "model": task, "prompt": prompt, "max_tokens": 24},
                            ).status_code
                        )
                    )
                except httpx.HTTPError as e:
                    outcomes.append(f"lost:{type(e).__name__}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    end = time.time() + minutes * 60
    try:
        while time.time() < end:
            time.sleep(min(kill_every, max(0.0, end - time.time())))
            actors = [x for x in ray.util.list_named_actors(all_namespaces=True) if "expert_" in x["name"]]
            if actors and time.time() < end:
                victim = rng.choice(actors)
                ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
                kills.append({"t": round(time.time() - (end - minutes * 60), 1), "actor": victim["name"]})
                print(f"killed {victim['name']}", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {k: outcomes.count(k) for k in sorted(set(outcomes))}, kills


def lost_or_unexpected(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k not in EXPECTED)

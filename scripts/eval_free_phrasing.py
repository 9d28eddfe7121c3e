#!/usr/bin/env python
"""Score the hand-written free-phrasing set (demo/free_phrasing.jsonl) through a RUNNING server, for
completions and chat, greedy: exact answers per task (entities: both fields right), routing top-1,
mean routing confidence and fallback share (logic: loraplex.demo.free_phrasing).

    make serve &                                   # or: serve run config/serve.yaml
    python scripts/eval_free_phrasing.py --url http://127.0.0.1:8000 --model auto --json docs/free_phrasing.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the running server")
    p.add_argument(
        "--model", default="auto", help="model to ask: auto, an adapter name, or 'oracle' (each row's own task adapter)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=48, help="max_tokens per request (48: the served default_max_tokens)"
    )
    p.add_argument("--api-key", default=None, help="API key, if the server needs one")
    p.add_argument("--json", type=Path, default=None, help="write the report (with every answer) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import httpx

    from loraplex.demo.free_phrasing import is_correct, load_set, top_adapter

    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    rows = load_set()
    report: dict = {"model": a.model, "n": len(rows), "endpoints": {}}
    with httpx.Client(base_url=a.url, headers=headers, timeout=120) as client:
        for endpoint in ("completions", "chat"):
            per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # right, routed right, n, fallback
            answers, confidence = [], []
            for r in rows:
                model = r.task if a.model == "oracle" else a.model
                sampling = {"model": model, "max_tokens": a.max_tokens, "temperature": 0.0}
                if endpoint == "completions":
                    resp = client.post("/v1/completions", json={**sampling, "prompt": r.prompt})
                else:
                    body = {**sampling, "messages": [{"role": "user", "content": r.prompt}]}
                    resp = client.post("/v1/chat/completions", json=body)
                if resp.status_code != 200:
                    answers.append({"id": r.id, "status": resp.status_code, "error": resp.text[:200]})
                    per_task[r.task][2] += 1
                    continue
                out = resp.json()
                choice = out["choices"][0]
                text = choice["text"] if endpoint == "completions" else choice["message"]["content"]
                routing = out.get("routing", {})
                ok = is_correct(r.task, text, r.answer)
                stats = per_task[r.task]
                stats[0] += ok
                stats[1] += top_adapter(routing) == r.task
                stats[2] += 1
                stats[3] += "fallback" in str(routing.get("mode", ""))
                if routing.get("confidence") is not None:
                    confidence.append(routing["confidence"])
                answers.append({"id": r.id, "output": text, "correct": ok, "routing": routing})
            n = sum(s[2] for s in per_task.values())
            report["endpoints"][endpoint] = {
                "exact": round(sum(s[0] for s in per_task.values()) / n, 4),
                "routing_top1": round(sum(s[1] for s in per_task.values()) / n, 4),
                "fallback_share": round(sum(s[3] for s in per_task.values()) / n, 4),
                "mean_confidence": round(sum(confidence) / len(confidence), 4) if confidence else None,
                "per_task_exact": {t: round(s[0] / s[2], 4) for t, s in sorted(per_task.items())},
                "answers": answers,
            }
            summary = {k: v for k, v in report["endpoints"][endpoint].items() if k != "answers"}
            print(endpoint, json.dumps(summary))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

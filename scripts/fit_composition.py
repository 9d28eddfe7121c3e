#!/usr/bin/env python
"""Fit a named composition's blend weights on labelled examples and serve it by name.

Gradient descent on the weights alone (softmax-parameterised, base and adapters frozen), a held-out split,
early stopping, a progress bar; then each single adapter, the uniform blend and the fitted blend are
compared on the held-out data (teacher-forced loss, and exact match of greedy completions through the
serving engine). Writes a JSON report and a PNG, and the composition where the server reads it
(--managed-root: the app's managed root, i.e. its first adapter root) or registers it over HTTP (--register).
Logic: loraplex.experts.blend_fit.

    python scripts/fit_composition.py --adapters intent,sentiment --space logits --name support-mix \\
        --data /tmp/mixed.jsonl --demo-data 400 --report docs/composition_fit.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from loraplex.experts.blend_fit import EPOCHS, HELDOUT, LR, PATIENCE


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", required=True, help="comma list of the adapters to blend (2 or more)")
    p.add_argument("--data", type=Path, required=True, help='JSONL of {"prompt": ..., "completion": ...} lines')
    p.add_argument("--space", choices=("delta", "logits"), default="logits", help="blend space (as served)")
    p.add_argument("--name", required=True, help="the composition's model name")
    p.add_argument("--config", type=Path, default=Path("config/serve.yaml"), help="Serve YAML: model and roots")
    p.add_argument("--base-model", default=None, help="override the config's base_model")
    p.add_argument("--adapter-roots", default=None, help="override the config's adapter_roots (comma list)")
    p.add_argument("--heldout", type=float, default=HELDOUT, help="share of the examples held out")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="most epochs (full-batch steps)")
    p.add_argument("--lr", type=float, default=LR, help="Adam learning rate on the weight logits")
    p.add_argument(
        "--patience", type=int, default=PATIENCE, help="epochs without a better held-out loss before stopping"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the split")
    p.add_argument("--demo-data", type=int, default=0, help="first write N rows of the demo's mixed task to --data")
    p.add_argument("--report", type=Path, default=None, help="JSON report path (default: <name>.fit.json here)")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: the report path with .png)")
    out = p.add_argument_group("where the composition goes (either, both or neither)")
    out.add_argument("--managed-root", type=Path, default=None, help="write it into this managed root")
    out.add_argument("--register", default=None, help="POST it to this server (e.g. http://127.0.0.1:8000)")
    out.add_argument("--admin-key-env", default="LORAPLEX_ADMIN_KEY", help="env var holding the admin key")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from loraplex.config.app import NamedComposition
    from loraplex.config.engine import EngineConfig
    from loraplex.deployments.app import PROJECT_ROOT
    from loraplex.experts.blend_fit import blend_spec, read_examples, run_fit
    from loraplex.experts.engine import Engine

    torch.manual_seed(args.seed)
    adapters = [a for a in args.adapters.split(",") if a]
    if len(adapters) < 2:
        print("--adapters needs two or more adapters", file=sys.stderr)
        return 2
    app = yaml.safe_load(args.config.read_text())["applications"][0]["args"]

    def where(path: str) -> str:
        return path if Path(path).is_absolute() or Path(path).exists() else str(PROJECT_ROOT / path)

    base = where(args.base_model or app["base_model"])
    roots = [where(r) for r in (args.adapter_roots.split(",") if args.adapter_roots else app["adapter_roots"])]
    if args.demo_data:
        from loraplex.demo.composition_task import mixed_rows, write_rows

        write_rows(args.data, mixed_rows(args.demo_data, seed=args.seed))
    rows = read_examples(args.data)
    config = EngineConfig(
        base_model=base,
        adapter_roots=roots,
        max_slots=max(len(adapters), 2),
        max_host_adapters=max(len(adapters), 2),
        max_rank=app.get("max_rank", 64),
        device="cpu",
        dtype="float32",
        **({"target_modules": app["target_modules"]} if "target_modules" in app else {}),
    )
    engine = Engine.from_config(config)
    bar = tqdm(total=args.epochs, desc=f"fitting {args.space} blend", unit="epoch")

    def progress(row: dict) -> None:
        bar.update(1)
        bar.set_postfix(heldout_loss=f"{row['heldout_loss']:.4f}", weights=row["weights"])

    report = run_fit(engine, adapters, rows, args.space, args.heldout, args.epochs, args.lr, args.patience,
                     args.seed, progress)  # fmt: skip
    bar.close()
    report["name"] = args.name
    report["command"] = " ".join(["scripts/fit_composition.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"\n{'candidate':22s} {'heldout loss':>12s} {'token acc':>10s} {'exact match':>12s}")
    for r in report["table"]:
        print(f"{r['candidate']:22s} {r['heldout_loss']:12.4f} {r['heldout_token_accuracy']:10.3f} "
              f"{r['heldout_exact_match']:12.3f}")  # fmt: skip
    print(f"fitted weights: {report['weights']} (best epoch {report['best_epoch']})")
    path = args.report or Path(f"{args.name.replace('/', '_')}.fit.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    from loraplex.bench.plots import plot_fit

    plot_fit(report, args.plot or path.with_suffix(".png"))
    fitted = next(r for r in report["table"] if r["candidate"] == "fitted")
    fit = {k: fitted[k] for k in ("heldout_loss", "heldout_token_accuracy", "heldout_exact_match")}
    named = NamedComposition(composition=blend_spec(report["weights"], args.space), fit=fit)
    if args.managed_root is not None:
        from loraplex.gateway.compositions import CompositionBook

        CompositionBook({}, args.managed_root).register(args.name, named)
        print(f"wrote composition {args.name!r} into {args.managed_root}")
    if args.register:
        import httpx

        key = os.environ.get(args.admin_key_env)
        body = {"name": args.name, **named.model_dump(exclude_none=True)}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(f"{args.register.rstrip('/')}/v1/compositions", json=body, headers=headers, timeout=60)
        print(f"POST /v1/compositions: HTTP {r.status_code} {r.text[:300]}")
        if r.status_code >= 400:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Compare expert-group autoscaling policies in a seeded simulation of a large multi-LoRA deployment (no Ray).

The model lives in `loraplex.autoscaling` (simulation, control, replicas, traffic, ...); this is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loraplex.autoscaling.compare import compare
from loraplex.autoscaling.control import POLICIES
from loraplex.autoscaling.frontier import frontier
from loraplex.autoscaling.plots import plot_compare, plot_frontier
from loraplex.autoscaling.report import (
    compare_headline,
    compare_table,
    gap_table,
    sweep_headline,
    sweep_table,
    target_lines,
)
from loraplex.autoscaling.simconfig import SimConfig
from loraplex.autoscaling.simulation import total_steps

DESCRIPTION = """\
Compare expert-group autoscaling policies in a seeded simulation of a large multi-LoRA deployment.

Policies: loraplex (loraplex.autoscaling.policy's desired_replicas + share_budget, Serve's own delays
off as build_app configures them, so only the policy's hysteresis acts), loraplex_double_delay (the
earlier wiring: Serve's delay logic on top of the policy's), ray_default (Ray Serve's ongoing-requests
policy, upscale 30 s / downscale 600 s, FCFS on the GPU cap) and static (GPUs split once by initial
demand). The group knobs are loraplex.autoscaling.simconfig.DOCS_PRESET, the values of the runs in
docs/autoscaling.md. No Ray is started; docs/autoscaling.md explains the model and the results."""

EPILOG = """\
examples:
  # the single comparison in docs/autoscaling.md (seed 0, all four policies)
  python scripts/simulate_autoscaling.py --json docs/autoscaling_sim.json --plot docs/autoscaling_sim.png

  # the frontier: each policy at several per-replica targets, p99 against replica-hours
  python scripts/simulate_autoscaling.py --sweep 16,24,32,48,64,80,96,128 --seeds 0,1,2 \\
      --json docs/autoscaling_frontier.json --plot docs/autoscaling_frontier.png

  # a quick look: 20 minutes on a small deployment
  python scripts/simulate_autoscaling.py --hours 0.3 --gpus 16 --adapters 80 --groups 5"""


def parse_args(argv=None) -> argparse.Namespace:
    d = SimConfig()
    p = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the full results (summary, series, config; with --sweep the frontier) here",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="write a PNG here (latency CDF, p99 over time, replicas, replica-hours; with --sweep p99 vs GPU-h)",
    )
    p.add_argument("--hours", type=float, default=d.hours, help=f"simulated hours (default {d.hours})")
    p.add_argument("--gpus", type=int, default=d.gpus, help=f"GPU budget = most replicas at once (default {d.gpus})")
    p.add_argument("--adapters", type=int, default=d.adapters, help=f"LoRA adapters (default {d.adapters})")
    p.add_argument("--groups", type=int, default=d.groups, help=f"expert groups (default {d.groups})")
    p.add_argument("--seed", type=int, default=0, help="seed of the traffic and cold starts (default 0)")
    p.add_argument(
        "--rps-per-gpu",
        type=float,
        default=d.rps_per_gpu,
        help=f"mean arrival rate per budget GPU (default {d.rps_per_gpu})",
    )
    p.add_argument(
        "--policies",
        default=None,
        help=f"comma-separated subset of {','.join(POLICIES)} (default: all; with --sweep loraplex,ray_default)",
    )
    p.add_argument(
        "--sweep",
        default=None,
        metavar="TARGETS",
        help="comma-separated per-replica targets (target_load = Ray's target_ongoing_requests): run each policy at "
        f"each and compare p99 against replica-hours with ray_default at {d.autoscaling.target_load:g} "
        "(--json/--plot get the frontier)",
    )
    p.add_argument("--seeds", default=None, help="with --sweep: comma-separated seeds (default: --seed)")
    p.add_argument(
        "--instant-shifts", action="store_true", help="popularity rotations switch at once instead of over 5 minutes"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    a.policies = a.policies or ("loraplex,ray_default" if a.sweep else ",".join(POLICIES))
    if a.seeds and not a.sweep:
        p.error("--seeds needs --sweep")
    bad = [x for x in a.policies.split(",") if x not in POLICIES]
    if bad:
        p.error(f"unknown policies {bad}; choose from {list(POLICIES)}")
    return a


def _with_progress(a: argparse.Namespace, total: int, desc: str, run):
    """`run(progress)` with a tqdm bar on stderr, or `run(None)` under --no-progress."""
    if a.no_progress:
        return run(None)
    from tqdm import tqdm

    with tqdm(total=total, unit="step", desc=desc, file=sys.stderr, mininterval=1.0) as bar:
        return run(bar.update)


def _finish(result: dict, start: float, argv) -> dict:
    result["cpu_s"] = round(time.process_time() - start, 1)
    result["command"] = "python scripts/simulate_autoscaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return result


def _write(a: argparse.Namespace, result: dict, plot, **json_format) -> None:
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, **json_format))
        print(f"wrote {a.json}")
    if a.plot:
        plot(result, a.plot)
        print(f"wrote {a.plot}")


def main(argv=None) -> int:
    a = parse_args(argv)
    extra = {"shift_ramp_s": 0.0} if a.instant_shifts else {}
    cfg = SimConfig(
        hours=a.hours, gpus=a.gpus, adapters=a.adapters, groups=a.groups, rps_per_gpu=a.rps_per_gpu, **extra
    )
    policies = a.policies.split(",")
    start = time.process_time()
    if a.sweep:
        targets = [float(x) for x in a.sweep.split(",")]
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
        result = _finish(
            _with_progress(
                a,
                total_steps(cfg, policies) * len(targets) * len(seeds),
                "sweeping",
                lambda progress: frontier(cfg, seeds, policies, targets, progress=progress),
            ),
            start,
            argv,
        )
        print(sweep_headline(result))
        print(sweep_table(result))
        if result["gaps"]:
            print(gap_table(result))
        _write(a, result, plot_frontier, indent=1)
        return 0
    result = _finish(
        _with_progress(
            a,
            total_steps(cfg, policies),
            "simulating",
            lambda progress: compare(cfg, a.seed, policies, progress=progress),
        ),
        start,
        argv,
    )
    print(compare_headline(result))
    print(compare_table(result))
    for line in target_lines(result):
        print(line)
    _write(a, result, plot_compare, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

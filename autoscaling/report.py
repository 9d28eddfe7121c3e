"""Markdown tables and one-line summaries of `compare` and `frontier` results, as the simulation CLI prints them
(and docs/autoscaling.md quotes them); they read the JSON-able dicts, so saved results print the same."""

from __future__ import annotations


def compare_headline(result: dict) -> str:
    """One line on the run behind a `compare` result: size, seed, traffic, CPU time (`cpu_s`, added by the caller)."""
    c, t = result["config"], result["trace"]
    return (
        f"{c['hours']} h, {c['gpus']} GPUs, {c['adapters']} adapters / {c['groups']} groups, seed {result['seed']}: "
        f"{t['requests']} requests ({t['mean_rps']} req/s mean), {len(t['bursts'])} bursts, {result['cpu_s']} s CPU"
    )


def sweep_headline(result: dict) -> str:
    """One line on the runs behind a `frontier` result."""
    c = result["config"]
    return (
        f"{c['hours']} h, {c['gpus']} GPUs, {c['adapters']} adapters / {c['groups']} groups, seeds {result['seeds']}, "
        f"targets {result['targets']}: {result['cpu_s']} s CPU"
    )


def _markdown(rows: list[tuple[str, ...]]) -> str:
    """A Markdown table with aligned columns; the first row is the header."""
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
    return "\n".join(lines)


def compare_table(result: dict) -> str:
    """One row per policy of a `compare` result: latency, drops, GPU-hours, replica starts."""
    rows = [("policy", "p50 s", "p99 s", "dropped", "drop %", "GPU-h", "serving GPU-h", "mean GPUs", "peak", "starts")]
    for name, r in result["policies"].items():
        rows.append(
            (
                name,
                f"{r['p50_s']:.2f}",
                f"{r['p99_s']:.2f}",
                str(r["dropped"]),
                f"{100 * r['drop_rate']:.2f}",
                f"{r['replica_hours']:.1f}",
                f"{r['serving_hours']:.1f}",
                f"{r['mean_gpus']:.1f}",
                str(r["peak_gpus"]),
                str(r["replica_starts"]),
            )
        )
    return _markdown(rows)


def target_lines(result: dict) -> list[str]:
    """Per autoscaled loraplex policy: its ratios against ray_default and whether the goal is met."""
    out = []
    for name, t in result.get("targets", {}).items():
        out.append(
            f"{name} vs ray_default: p99 x{t['p99_ratio']}, replica-hours x{t['replica_hours_ratio']}, "
            f"drops not worse: {t['drops_not_worse']} -> target {'MET' if t['met'] else 'NOT met'} ({t['rule']})"
        )
    return out


def sweep_table(result: dict) -> str:
    """Every point of a `frontier` result: seed, policy, target and its summary."""
    rows = [("seed", "policy", "target", "p50 s", "p99 s", "drop %", "GPU-h", "peak", "starts", "dominated")]
    for seed, pts in result["points"].items():
        for name, points in pts.items():
            for r in points:
                rows.append(
                    (
                        seed,
                        name,
                        f"{r['target_load']:g}",
                        f"{r['p50_s']:.2f}",
                        f"{r['p99_s']:.2f}",
                        f"{100 * r['drop_rate']:.2f}",
                        f"{r['replica_hours']:.1f}",
                        str(r["peak_gpus"]),
                        str(r["replica_starts"]),
                        "yes" if r["dominated"] else "",
                    )
                )
    return _markdown(rows)


def gap_table(result: dict) -> str:
    """Every other policy against each ray_default point ('*' the reference target, '(dominated)' a point off
    ray_default's own frontier): its GPU-h at that p99 and its p99 at those GPU-h, interpolated along its sweep."""
    rows = [
        (
            "seed",
            "policy",
            "vs ray_default at",
            "ray p99 s / GPU-h / drop %",
            "GPU-h at same p99 (saved, drop %)",
            "p99 at same GPU-h (ratio, drop %)",
            "target",
        )
    ]
    for seed, gaps in result["gaps"].items():
        ray = {r["target_load"]: r for r in result["points"][seed]["ray_default"]}
        for name, per_ref in gaps.items():
            for g in per_ref:
                a, b, t = g["at_ref_p99"], g["at_ref_hours"], g["ref_target_load"]
                marks = (" *" if t == result["reference_target"] else "") + (
                    " (dominated)" if ray[t]["dominated"] else ""
                )
                rows.append(
                    (
                        seed,
                        name,
                        f"{t:g}{marks}",
                        f"{g['ref_p99_s']:.1f} / {g['ref_replica_hours']:.1f} / {100 * g['ref_drop_rate']:.2f}",
                        "not bracketed"
                        if a is None
                        else f"{a['replica_hours']:.1f} ({100 * g['hours_saved']:+.1f} %, {100 * a['drop_rate']:.2f})",
                        "not bracketed"
                        if b is None
                        else f"{b['p99_s']:.1f} (x{g['p99_ratio']:.2f}, {100 * b['drop_rate']:.2f})",
                        "MET" if g["met"] else "not met",
                    )
                )
    return _markdown(rows)

"""Which offered rates a system sustains, and the serving benchmark's summary: pure functions of the step records.

Kept apart from the load client so the verdict can be recomputed from a saved JSON (the committed
docs/bench_serving.json reproduces its own summary) and tested without a cluster.

Sustainable = p99 <= SLO, error rate below `max_error_rate`, and achieved >= `min_achieved` x offered (the lower
of the nominal rate and the rate the Poisson draw actually offered). The summary's headline is each system's
highest sustainable rate over the baseline's, plus latencies at the baseline's sustainable ("matched") rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.bench.systems import REFERENCE_OF, SYSTEMS, TARGETS


@dataclass(frozen=True)
class Criteria:
    """What a rate step must meet to count as sustainable."""

    slo_ms: float  # p99 bound
    max_error_rate: float = 0.01  # errors + timeouts, fraction of requests sent
    min_achieved: float = 0.9  # completed req/s over offered req/s

    def passes(self, step: dict) -> bool:
        offered = min(step["offered_rps"], step["offered_actual_rps"] or step["offered_rps"])
        return (
            step["completed"] > 0
            and step["p99_ms"] is not None
            and step["p99_ms"] <= self.slo_ms
            and step["error_rate"] < self.max_error_rate
            and step["achieved_rps"] >= self.min_achieved * offered
        )

    def describe(self) -> str:
        return (
            f"p99 <= {self.slo_ms:.0f} ms, errors < {self.max_error_rate:.0%}, "
            f"achieved >= {self.min_achieved:.0%} of offered"
        )


def _ratio(x: float, y: float) -> float | None:
    return round(x / y, 2) if y else None


def summarize(steps: list[dict], criteria: Criteria, systems: tuple[str, ...] = SYSTEMS) -> dict:
    """Per system: the best sustainable step and peaks; per system with a reference in the run (REFERENCE_OF:
    loraplex -> baseline, loraplex-vllm -> vllm-server, the mix -> loraplex-vllm): ratios to it, its target,
    and latencies at the reference's sustainable ("matched") rate.

    Reads each step's stored `sustainable` flag (set by `Criteria.passes` during the sweep), so a saved run's
    summary is recomputed exactly. `lower_bound_only` marks a system that never failed: the ladder ran out first.
    """
    by = {s: [x for x in steps if x["system"] == s] for s in systems}
    out: dict = {"slo_p99_ms": round(criteria.slo_ms, 1), "criteria": criteria.describe()}
    for s, xs in by.items():
        ok = [x for x in xs if x["sustainable"]]
        best = max(ok, key=lambda x: x["offered_rps"]) if ok else None
        top = max(x["offered_rps"] for x in xs) if xs else None
        out[s] = {
            "sustainable_rps": best["offered_rps"] if best else 0.0,
            "sustainable_achieved_rps": best["achieved_rps"] if best else 0.0,
            "sustainable_tokens_per_s": best["tokens_per_s"] if best else 0.0,
            "p50_ms_at_sustainable": best["p50_ms"] if best else None,
            "p99_ms_at_sustainable": best["p99_ms"] if best else None,
            "peak_achieved_rps": max((x["achieved_rps"] for x in xs), default=0.0),
            "peak_tokens_per_s": max((x["tokens_per_s"] for x in xs), default=0.0),
            "highest_rate_offered": top,
            "lower_bound_only": bool(best and top == best["offered_rps"]),
        }
        if best and best.get("tpot_p50_ms") is not None:
            out[s]["ttft_p50_ms_at_sustainable"] = best["ttft_p50_ms"]
            out[s]["tpot_p50_ms_at_sustainable"] = best["tpot_p50_ms"]
    for s in systems:
        ref = REFERENCE_OF.get(s)
        if ref not in by:
            continue
        lp, bl = out[s], out[ref]
        lp["reference"] = ref
        lp["sustainable_ratio"] = _ratio(lp["sustainable_rps"], bl["sustainable_rps"])
        lp["sustainable_tokens_ratio"] = _ratio(lp["sustainable_tokens_per_s"], bl["sustainable_tokens_per_s"])
        lp["peak_achieved_ratio"] = _ratio(lp["peak_achieved_rps"], bl["peak_achieved_rps"])
        lp["target_ratio"] = TARGETS[s]
        lp["target_met"] = bool(lp["sustainable_ratio"] and lp["sustainable_ratio"] >= TARGETS[s])
        if s == "loraplex":
            lp["target_3x_met"] = lp["target_met"]
        m = bl["sustainable_rps"]  # matched rate: the reference's sustainable rate, this system measured there
        base_at_m = next((x for x in by[ref] if x["offered_rps"] == m), None)
        at_m = next((x for x in by[s] if x["offered_rps"] == m), None)
        if m and at_m and base_at_m and at_m["p50_ms"]:
            lp["at_matched_rate"] = {
                "offered_rps": m,
                "p50_ms": at_m["p50_ms"],
                "p99_ms": at_m["p99_ms"],
                "achieved_rps": at_m["achieved_rps"],
                "baseline_p50_ms": base_at_m["p50_ms"],
                "baseline_p99_ms": base_at_m["p99_ms"],
                "baseline_achieved_rps": base_at_m["achieved_rps"],
                "p50_ratio_baseline_over_this": round(base_at_m["p50_ms"] / at_m["p50_ms"], 2),
                "p99_ratio_baseline_over_this": round(base_at_m["p99_ms"] / at_m["p99_ms"], 2),
            }
    if "loraplex" in out and "sustainable_ratio" in out["loraplex"]:
        out["sustainable_ratio"] = out["loraplex"]["sustainable_ratio"]  # the headline: loraplex as shipped
        out["target_3x_met"] = out["loraplex"]["target_3x_met"]
    return out


# issue 16's targets for the native engine against vLLM's own server, in each dtype
NATIVE_VS_VLLM_TARGETS = {"sustainable_ratio": 1.5, "tpot_ratio_max": 1.0, "distinct": 2.0, "base": 1.0}


def native_vs_vllm(summary: dict, steps: list[dict], closed: list[dict]) -> dict | None:
    """loraplex (native) against vllm-server: sustainable-rate ratio at the run's p99 SLO, TPOT p50 ratios at
    the rates both ran (1-4 req/s are the target's), and the closed-loop throughput ratios per shape."""
    if "loraplex" not in summary and not closed:
        return None
    out: dict = {"targets": NATIVE_VS_VLLM_TARGETS}
    if "loraplex" in summary and "vllm-server" in summary:
        a, b = summary["loraplex"]["sustainable_rps"], summary["vllm-server"]["sustainable_rps"]
        out["sustainable_ratio"] = _ratio(a, b)
        out["lower_bound_only"] = summary["loraplex"]["lower_bound_only"]
        tpot = {}
        for x in steps:
            if x["system"] != "loraplex" or x.get("tpot_p50_ms") is None:
                continue
            ref = next(
                (y for y in steps if y["system"] == "vllm-server" and y["offered_rps"] == x["offered_rps"]), None
            )
            if ref and ref.get("tpot_p50_ms"):
                tpot[str(x["offered_rps"])] = {
                    "loraplex_ms": x["tpot_p50_ms"],
                    "vllm_server_ms": ref["tpot_p50_ms"],
                    "ratio": round(x["tpot_p50_ms"] / ref["tpot_p50_ms"], 3),
                }
        out["tpot_p50"] = tpot
        low = [v["ratio"] for k, v in tpot.items() if 1 <= float(k) <= 4]
        out["tpot_target_met"] = bool(low) and max(low) <= NATIVE_VS_VLLM_TARGETS["tpot_ratio_max"]
        out["sustainable_target_met"] = bool(
            out["sustainable_ratio"] and out["sustainable_ratio"] >= NATIVE_VS_VLLM_TARGETS["sustainable_ratio"]
        )
    for shape in sorted({f"{x['shape']}:{x['concurrency']}" for x in closed}):
        by = {x["system"]: x for x in closed if f"{x['shape']}:{x['concurrency']}" == shape}
        row = {
            s: {"rps": x["achieved_rps"], "tpot_p50_ms": x["tpot_p50_ms"], "p99_ms": x["p99_ms"]} for s, x in by.items()
        }
        if "loraplex" in by and "vllm-server" in by:
            ratio = _ratio(by["loraplex"]["achieved_rps"], by["vllm-server"]["achieved_rps"])
            row["ratio"] = ratio
            row["target"] = NATIVE_VS_VLLM_TARGETS[shape.split(":")[0]]
            row["target_met"] = bool(ratio and ratio >= row["target"])
        out[shape] = row
    return out

"""Benchmark, soak and chaos machinery behind scripts/bench_engine.py, bench_serving.py, soak.py and chaos.py.

fixtures (random bench model + adapters), workloads (seeded arrivals and prompts), systems (what the serving
benchmark deploys and how to reach it), load (open-loop HTTP client and rate ladder), verdict (sustainable
rate and summary), engine (in-process engine benchmark), soak, chaos, plots, cluster (local Ray + Serve,
`wait_healthy`), baseline_multiplexed (the @serve.multiplexed PEFT baseline).
"""

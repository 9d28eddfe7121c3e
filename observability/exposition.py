"""Many processes' Prometheus expositions as one: every sample gets its source's labels, families with one
name are merged (one HELP/TYPE line each), `_created` samples are dropped. The result is what
`GET /metrics` returns; `promtool check metrics` accepts it (tested on a real scrape)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class _Families:
    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self):
        return iter(self._families)


def merge(sources: Iterable[tuple[dict[str, str], str]]) -> str:
    """`sources`: (labels naming the process, its exposition text) -> one exposition text."""
    families: dict[str, Metric] = {}
    for labels, text in sources:
        for fam in text_string_to_metric_families(text):
            if fam.name.endswith("_created"):  # creation times: per-process noise, not an app metric
                continue
            into = families.get(fam.name)
            if into is None:
                into = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                into.samples.append(Sample(s.name, {**s.labels, **labels}, s.value, s.timestamp, s.exemplar))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry).decode()

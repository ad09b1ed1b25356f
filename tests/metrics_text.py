"""Reading a `/metrics` page in tests: parsed with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, frozenset[tuple[str, str]]]


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[Sample, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    @classmethod
    def of(cls, url: str) -> Scrape:
        r = httpx.get(url + "/metrics", timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return cls(r.text)

    def value(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels` (0 when none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def label_sets(self, name: str) -> list[Mapping[str, str]]:
        return [dict(ls) for (n, ls) in self.samples if n == name]

    def series(self) -> set[Sample]:
        return set(self.samples)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)

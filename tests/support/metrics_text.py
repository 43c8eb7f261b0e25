"""Reading Prometheus' text format back in tests: every sample of a /metrics answer by name and
labels, parsed by prometheus_client's own parser (what a Prometheus server would see)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none): summing
    over the labels not given, like PromQL's ``sum(name{labels})``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    """Every value ``label`` takes on the samples of ``name``."""
    return {
        dict(have)[label] for (n, have), _ in samples.items() if n == name and label in dict(have)
    }

"""Prometheus metrics: jobs by outcome, stage latencies, in-flight, remote call outcomes."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per process (tests make their own, so nothing is global)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "klein_jobs_total", "Jobs that reached an outcome", ["outcome"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "klein_stage_seconds",
            "Time spent in each stage of a job",
            ["stage"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "klein_jobs_in_flight", "Jobs this process is driving", registry=self.registry
        )
        self.calls = Counter(
            "klein_remote_calls_total",
            "Calls to remote services by outcome",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.wakeups = Counter(
            "klein_wakeups_total", "Claimer wake-ups by source", ["source"], registry=self.registry
        )

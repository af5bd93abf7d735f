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
        self.operator_problems = Gauge(
            "klein_needs_operator",
            "1 while a service refuses us for a reason only an operator can fix",
            ["service"],
            registry=self.registry,
        )
        self.loop_failures = Counter(
            "klein_loop_failures_total",
            "Exceptions that escaped a service loop (it restarted after a backoff)",
            ["loop"],
            registry=self.registry,
        )
        self.orphans = Counter(
            "klein_orphan_runpod_jobs_total",
            "RunPod jobs that were not the recorded submission of their job, by what was done",
            ["action"],
            registry=self.registry,
        )
        self.wakeups = Counter(
            "klein_wakeups_total", "Claimer wake-ups by source", ["source"], registry=self.registry
        )
        self.results = Counter(
            "klein_runpod_results_total",
            "Finished RunPod jobs' results, by how they came (webhook body or /status)",
            ["via"],
            registry=self.registry,
        )

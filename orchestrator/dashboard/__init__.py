"""The live, read-only dashboard `klein serve` answers at `/`: the queue, the latest jobs with
their progress and stage timeline, failure reasons, and the last hour's throughput and latency."""

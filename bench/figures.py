"""The full-path benchmark's arithmetic, kept pure so that it is tested on its own
(tests/unit/test_bench_figures.py): call rates over a sliding window, overhead beyond the outside
systems' own time, detection delay, and the correctness verdict of one job's rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def max_in_window(times: Sequence[float], window_s: float) -> int:
    """The most events inside any window of `window_s` seconds (half-open, [t, t + window))."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(frozen=True)
class Latencies:
    """The outside systems' own time for one job (seconds): what no orchestrator can remove."""

    translate_s: float
    gpu_s: float
    storage_s: float
    title_s: float
    # The title is asked for while the image uploads (TITLE_IMAGE=thumbnail, since 2026-12-04);
    # with TITLE_IMAGE=url it is asked for once the image is stored, after the upload.
    title_overlaps_upload: bool = False

    @property
    def total_s(self) -> float:
        """The least a job can take end to end: the translation, the GPU run, then the upload
        and the title, one after the other or, when they overlap, the longer of the two."""
        if self.title_overlaps_upload:
            return self.translate_s + self.gpu_s + max(self.storage_s, self.title_s)
        return self.translate_s + self.gpu_s + self.storage_s + self.title_s


def overheads(
    end_to_end_s: Sequence[float], services: Latencies, gpu_s: Sequence[float] | None = None
) -> list[float]:
    """Each job's end-to-end time less the services' own time: what the orchestrator added
    (claiming, calls, polling, decoding, storing, finalizing, and any queueing of ours). With
    `gpu_s`, each job's own GPU run time (they vary) replaces `services.gpu_s`."""
    if gpu_s is None:
        return [total - services.total_s for total in end_to_end_s]
    others_s = services.total_s - services.gpu_s
    return [total - others_s - gpu for total, gpu in zip(end_to_end_s, gpu_s, strict=True)]


@dataclass(frozen=True)
class Span:
    """A stretch of one job's time spent inside an outside system, as that system saw it
    (time.time() seconds): a request from its arrival to its answer, or the GPU run."""

    kind: str
    start: float
    end: float


def covered_s(spans: Sequence[Span], start: float, end: float) -> float:
    """How much of [start, end] the spans cover, overlaps counted once."""
    total, reached = 0.0, start
    for span in sorted(spans, key=lambda s: s.start):
        low, high = max(span.start, reached), min(span.end, end)
        if high > low:
            total += high - low
            reached = high
    return total


def gaps(spans: Sequence[Span], start: float, end: float) -> dict[str, float]:
    """The time in [start, end] no span covers, by what came next: `before <kind>` for the
    uncovered time before each span began, `before end` for the rest. The sum is `end - start`
    less `covered_s`: the job's own time in the orchestrator, step by step."""
    named: dict[str, float] = {}
    reached = start
    for span in sorted(spans, key=lambda s: s.start):
        if span.start > reached:
            key = f"before {span.kind}"
            named[key] = named.get(key, 0.0) + min(span.start, end) - reached
        reached = max(reached, min(span.end, end))
    named["before end"] = max(0.0, end - reached)
    return named


def detection_delays(finished_and_seen: Sequence[tuple[float, float | None]]) -> list[float]:
    """For each RunPod job that finished and was seen finished: from the moment it finished to
    the moment the orchestrator learnt it (a `/status` answer saying so, or the completion
    webhook's answer), whichever came first."""
    return [seen - finished for finished, seen in finished_and_seen if seen is not None]


def first_seen(*moments: float | None) -> float | None:
    """The earliest of the moments that happened (None: none did)."""
    happened = [moment for moment in moments if moment is not None]
    return min(happened) if happened else None


@dataclass(frozen=True)
class JobRow:
    """What the database says of one benchmark job at the end."""

    work_status: str
    job_status: str
    attempts: int
    title: str | None
    size: tuple[int, int] | None  # the files row's width and height
    stored: tuple[int, int] | None  # the stored object's PNG size, None if nothing is stored


def job_problem(row: JobRow, expected_size: tuple[int, int], expected_title: str) -> str | None:
    """Why this job did not complete as it should (None: completed once, titled by the model,
    its files row and stored PNG of the output's true size)."""
    if (row.work_status, row.job_status) != ("completed", "completed"):
        return f"work {row.work_status}, job {row.job_status}"
    if row.attempts != 1:
        return f"submitted {row.attempts} times"
    if row.title != expected_title:
        return f"titled {row.title!r}, not the model's title"
    if row.size != expected_size:
        return f"files row {row.size}, not {expected_size}"
    if row.stored != expected_size:
        return "no stored PNG of the output's size"
    return None

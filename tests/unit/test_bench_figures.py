"""The full-path benchmark's arithmetic (bench/figures.py) and its fakes' PNG header reading."""

from bench.fakes import png_size
from bench.figures import (
    JobRow,
    Latencies,
    Span,
    covered_s,
    detection_delays,
    first_seen,
    gaps,
    job_problem,
    max_in_window,
    overheads,
)

SIZE = (1168, 880)
TITLE = "해변의 노을 풍경"


def test_the_busiest_window_counts_events_in_a_half_open_span():
    assert max_in_window([], 10) == 0
    assert max_in_window([0.0, 1.0, 9.9, 10.0, 10.5], 10) == 4  # [1, 11)
    assert max_in_window([5.0, 0.0, 20.0, 3.0], 10) == 3  # unsorted input
    assert max_in_window([0.0, 10.0, 20.0], 10) == 1  # the window is open at its end


def test_overhead_is_end_to_end_less_the_services_own_time():
    services = Latencies(translate_s=0.2, gpu_s=2.0, storage_s=0.05, title_s=0.3)
    assert services.total_s == 2.55
    got = overheads([2.55, 2.6, 3.55], services)
    assert [round(v, 6) for v in got] == [0.0, 0.05, 1.0]
    # Each job's own GPU time, when runs vary: 2.55 with a 1.5 s run is 0.5 s of overhead.
    got = overheads([2.55, 2.6, 3.55], services, gpu_s=[1.5, 2.6, 2.0])
    assert [round(v, 6) for v in got] == [0.5, -0.55, 1.0]


def test_an_upload_and_a_title_that_overlap_count_once_the_longer():
    overlapping = Latencies(0.2, 2.0, storage_s=0.05, title_s=0.3, title_overlaps_upload=True)
    assert overlapping.total_s == 2.5
    assert [round(v, 6) for v in overheads([2.5, 2.55], overlapping)] == [0.0, 0.05]
    slow_upload = Latencies(0.2, 2.0, storage_s=0.5, title_s=0.3, title_overlaps_upload=True)
    assert slow_upload.total_s == 2.7


def test_detection_counts_only_jobs_seen_finished_and_takes_the_first_sign():
    assert detection_delays([(10.0, 10.25), (11.0, None), (12.0, 13.0)]) == [0.25, 1.0]
    assert first_seen(None, None) is None
    assert first_seen(5.0, None, 4.0) == 4.0


def good_row(**changes: object) -> JobRow:
    fields: dict[str, object] = {
        "work_status": "completed",
        "job_status": "completed",
        "attempts": 1,
        "title": TITLE,
        "size": SIZE,
        "stored": SIZE,
    }
    return JobRow(**(fields | changes))  # type: ignore[arg-type]


def test_a_job_passes_only_when_completed_once_titled_recorded_and_stored():
    assert job_problem(good_row(), SIZE, TITLE) is None
    assert job_problem(good_row(work_status="failed"), SIZE, TITLE) == "work failed, job completed"
    assert job_problem(good_row(attempts=2), SIZE, TITLE) == "submitted 2 times"
    assert "not the model's title" in str(job_problem(good_row(title="I2I 작품"), SIZE, TITLE))
    assert "files row None" in str(job_problem(good_row(size=None), SIZE, TITLE))
    assert job_problem(good_row(stored=None), SIZE, TITLE) == "no stored PNG of the output's size"


def test_a_png_header_gives_its_size_and_anything_else_none():
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (1168).to_bytes(4, "big")
    assert png_size(header + (880).to_bytes(4, "big") + b"\x08\x02") == (1168, 880)
    assert png_size(b"GIF89a" + bytes(30)) is None
    assert png_size(header[:20]) is None


def test_time_covered_by_the_services_counts_overlaps_once_and_only_inside_the_job():
    spans = [
        Span("gpu", 1.0, 3.0),
        Span("run", 1.0, 1.5),  # inside the GPU run: no time of its own
        Span("upload", 4.0, 5.0),
        Span("title", 9.0, 12.0),  # past the job's end: only 1 s of it counts
    ]
    assert covered_s(spans, 0.0, 10.0) == 2.0 + 1.0 + 1.0
    assert covered_s([], 0.0, 10.0) == 0.0
    assert covered_s([Span("gpu", -5.0, 20.0)], 0.0, 10.0) == 10.0


def test_the_jobs_own_time_is_named_by_the_step_that_came_next():
    spans = [Span("upload", 4.0, 5.0), Span("gpu", 1.0, 3.0), Span("run", 1.0, 1.5)]
    got = gaps(spans, 0.5, 6.0)
    assert got == {"before gpu": 0.5, "before upload": 1.0, "before end": 1.0}
    assert sum(got.values()) == 6.0 - 0.5 - covered_s(spans, 0.5, 6.0)
    assert gaps([], 0.0, 2.0) == {"before end": 2.0}

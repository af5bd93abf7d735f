"""The full-path benchmark, the instrument issue 11's figures come from, still runs its whole
shape end to end (steady arrivals, two replicas, the completion webhook) and checks every job it
ran: a small, fast version of `python -m bench.full_path`, against the test PostgreSQL."""

import re

from bench import full_path


def test_the_full_path_benchmark_runs_replicas_at_a_steady_rate_and_checks_every_job(
    pg_server, capsys
):
    code = full_path.main(
        [
            *("--jobs", "6", "--rate", "20", "--replicas", "2", "--mode", "webhook"),
            *("--gpu-s", "0.3", "--gpu-jitter-s", "0.2", "--translate-s", "0.01"),
            *("--title-s", "0.01", "--storage-s", "0.01", "--timeout-s", "60"),
            *("--server", pg_server),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "6 jobs arriving at 20/s, webhook, 2 klein serve, MAX_IN_FLIGHT=3" in out
    assert "every job completed once, titled, files row and stored PNG: OK" in out
    assert re.search(r"^  completed +6$", out, re.MULTILINE), out
    assert re.search(r"^  results taken from the webhook +6$", out, re.MULTILINE), out

"""The pure parts of the local endpoint's worker subprocesses and worker-facing API."""

from devtools.endpoint import jobs
from devtools.endpoint.jobs import Outcome, Progress, RunPodStatus
from devtools.endpoint.workers import WorkerLaunch, restart_delay_s, worker_env

LAUNCH = WorkerLaunch("http://127.0.0.1:1234/v2/local", "local", key="secret")


def test_a_worker_gets_runpods_variables_pointed_at_the_endpoint():
    env = worker_env({"PATH": "/bin"}, LAUNCH, "local-worker-3")
    assert env["RUNPOD_WEBHOOK_GET_JOB"] == "http://127.0.0.1:1234/v2/local/job-take/$ID?gpu=local"
    assert "/job-take/" in env["RUNPOD_WEBHOOK_GET_JOB"], "the SDK derives job-stop from it"
    assert env["RUNPOD_WEBHOOK_POST_OUTPUT"].endswith("/job-done/$RUNPOD_POD_ID/$ID?gpu=local")
    assert env["RUNPOD_WEBHOOK_PING"].endswith("/ping/$RUNPOD_POD_ID?gpu=local")
    assert env["RUNPOD_POD_ID"] == "local-worker-3"
    assert env["RUNPOD_AI_API_KEY"] == "secret"
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == "true"
    assert env["RUNPOD_LOG_LEVEL"] == "WARN"
    assert env["PATH"] == "/bin"


def test_the_hosts_log_level_wins_but_not_its_runpod_urls():
    host = {"RUNPOD_LOG_LEVEL": "DEBUG", "RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/x"}
    env = worker_env(host, LAUNCH, "local-worker-1")
    assert env["RUNPOD_LOG_LEVEL"] == "DEBUG"
    assert env["RUNPOD_WEBHOOK_GET_JOB"].startswith("http://127.0.0.1:1234/")


def test_a_local_worker_waits_briefly_for_comfyui_unless_told_otherwise():
    assert worker_env({}, LAUNCH, "local-worker-1")["COMFY_STARTUP_TIMEOUT_S"] == "10"
    told = worker_env({"COMFY_STARTUP_TIMEOUT_S": "180"}, LAUNCH, "local-worker-1")
    assert told["COMFY_STARTUP_TIMEOUT_S"] == "180"


def test_the_launch_does_not_show_its_key():
    assert "secret" not in repr(LAUNCH)


def test_restart_pauses_grow_and_stop_growing_at_thirty_seconds():
    assert [restart_delay_s(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert restart_delay_s(20) == 30


def test_a_progress_post_is_progress():
    assert jobs.read_result({"status": "IN_PROGRESS", "output": {"step": 1}}) == Progress(
        {"step": 1}
    )


def test_an_error_result_fails_and_keeps_the_rest_as_output():
    result = jobs.read_result({"error": "Missing required parameter: image", "stopPod": True})
    assert result == Outcome(RunPodStatus.FAILED, None, "Missing required parameter: image")
    assert jobs.wants_new_worker({"error": "x", "stopPod": True})
    assert not jobs.wants_new_worker({"output": {"stopPod": True}})


def test_an_output_completes():
    assert jobs.read_result({"output": {"image": "b64"}}) == Outcome(
        RunPodStatus.COMPLETED, {"image": "b64"}
    )


def test_an_oversized_result_says_how_big_and_what_to_do():
    outcome = jobs.oversized_result(27_300_000, 20_000_000)
    assert outcome.status is RunPodStatus.FAILED
    assert outcome.error == (
        "the job's result is 27.3 MB, over RunPod's 20 MB limit; return a smaller output or "
        "upload it and return its URL"
    )

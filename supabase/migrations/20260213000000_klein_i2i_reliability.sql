-- Reliability counters (additive, idempotent).
-- abandoned: claims of a job whose holder stopped without writing an outcome (a crash, a lost
-- lease, a hand-over). Past MAX_ABANDONED the job fails instead of taking down process after
-- process. retries (already there) is the job's budget for transient and unexpected errors.
ALTER TABLE public.generation_jobs
    ADD COLUMN IF NOT EXISTS abandoned integer NOT NULL DEFAULT 0;

-- submit_started_at: set just before `/run`, cleared once its RunPod id is recorded (or the
-- RunPod job it made is known and cancelled). Still set on a job without a runpod_job_id, it
-- says a RunPod job may exist that nobody recorded: with completion webhooks on, the next holder
-- waits for that webhook (which adopts the job) before submitting again.
ALTER TABLE public.generation_jobs
    ADD COLUMN IF NOT EXISTS submit_started_at timestamptz;

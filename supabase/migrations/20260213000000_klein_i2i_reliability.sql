-- Reliability counters (additive, idempotent).
-- abandoned: claims of a job whose holder stopped without writing an outcome (a crash, a lost
-- lease, a hand-over). Past MAX_ABANDONED the job fails instead of taking down process after
-- process. retries (already there) is the job's budget for transient and unexpected errors.
ALTER TABLE public.generation_jobs
    ADD COLUMN IF NOT EXISTS abandoned integer NOT NULL DEFAULT 0;

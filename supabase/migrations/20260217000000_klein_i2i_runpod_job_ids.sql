-- Jobs by their recorded RunPod job (additive, idempotent). A completion webhook that names a
-- RunPod job other than its own job's is checked against it: a RunPod job another job recorded
-- is neither cancelled as a stray nor adopted (orchestrator/sql/queries.sql, runpod_job_holder
-- and adopt_submission).
CREATE INDEX IF NOT EXISTS generation_jobs_runpod_job_id_idx
    ON public.generation_jobs (runpod_job_id)
    WHERE runpod_job_id IS NOT NULL;

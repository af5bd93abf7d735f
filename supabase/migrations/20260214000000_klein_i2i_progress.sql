-- Live progress and stage timings (additive, idempotent).
--
-- works.progress: what the job is doing right now, for the web app, `klein submit --wait` and the
-- dashboard. NULL when nothing is known or the work has ended. Shape (every key always present):
--   {"stage": "sampling", "node": "KSampler", "step": 3, "steps": 4, "at": "2026-12-03T06:40:00Z"}
-- stage is a plain word or two ("queued on RunPod", "loading models", "sampling", ...); node,
-- step and steps are null when unknown. The orchestrator writes it at most about once a second
-- per job, fenced by its lease like every other write. Users cannot write it (the update guard
-- of 20260212000000 whitelists status, cancelled_at and updated_at only).
ALTER TABLE public.works
    ADD COLUMN IF NOT EXISTS progress jsonb;

-- generation_jobs.timings: how long each stage of the job took, in milliseconds, written as the
-- job goes and complete when it ends. Keys (each present once the stage has run):
--   claim, translate, submit, runpod_queue, gpu, store, title, finalize
-- e.g. {"claim": 3, "translate": 212, "submit": 41, "runpod_queue": 900, "gpu": 2010, ...}.
-- The dashboard draws them as a small timeline per job.
ALTER TABLE public.generation_jobs
    ADD COLUMN IF NOT EXISTS timings jsonb;

-- Indexes for the dashboard's reads (orchestrator/sql/queries.sql, dashboard_*), additive and
-- idempotent. Without them each poll (every 2 s per open page) scans the whole history: about
-- 400 ms at 200,000 jobs on 2 cores; the latest jobs, the last hour and the last day's failures
-- are small slices of it.

-- The latest jobs, newest first.
CREATE INDEX IF NOT EXISTS generation_jobs_created_at_idx
    ON public.generation_jobs (created_at DESC);

-- Jobs that ended in the last hour (throughput and latency).
CREATE INDEX IF NOT EXISTS generation_jobs_finished_at_idx
    ON public.generation_jobs (finished_at)
    WHERE finished_at IS NOT NULL;

-- Works that failed in the last day (failure reasons).
CREATE INDEX IF NOT EXISTS works_failed_at_idx
    ON public.works (failed_at)
    WHERE status = 'failed';

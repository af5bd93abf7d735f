-- RunPod's completion webhooks carry the job's result, and their URL's token is all that
-- authenticates them (RunPod signs nothing), so no user may read a token (additive, idempotent).
--
-- Until now the token was generation_jobs.webhook_token, and "Users see own jobs" (20260211000001)
-- let a user read their own job's row, token included: with it they could post a result of
-- their choosing for their own job. The tokens move to a table of their own that only the
-- orchestrator (its owner) reads: RLS is on and no policy lets anon or authenticated see a row,
-- whatever grants Supabase's default privileges or a later migration give those roles; their
-- privileges are revoked as well. generation_jobs.webhook_token stays (a column dropped under a
-- running web app can break its queries), emptied and no longer written.
CREATE TABLE IF NOT EXISTS public.generation_job_tokens (
    job_id        uuid PRIMARY KEY REFERENCES public.generation_jobs (id) ON DELETE CASCADE,
    webhook_token text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE public.generation_job_tokens ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.generation_job_tokens FROM anon, authenticated;

-- Tokens of jobs in flight keep working: their webhooks find them in the new table.
INSERT INTO public.generation_job_tokens (job_id, webhook_token)
SELECT id, webhook_token FROM public.generation_jobs WHERE webhook_token IS NOT NULL
ON CONFLICT DO NOTHING;

UPDATE public.generation_jobs SET webhook_token = NULL WHERE webhook_token IS NOT NULL;

COMMENT ON COLUMN public.generation_jobs.webhook_token IS
    'unused since migration 20260215000000: tokens are in generation_job_tokens, out of users'' sight';

-- Klein I2I: the seed's four tables, the orchestrator's reliability columns, the claim indexes
-- and the job-created notification.
--
-- Idempotent and additive: the production database already has the seed's tables (created by the
-- n8n workflow's era, with `timestamp` columns and maybe fewer columns than the seed lists), so
-- every statement is IF NOT EXISTS / CREATE OR REPLACE, nothing is dropped, no type is changed and
-- no row is rewritten. Runs inside one transaction (our runner and the Supabase CLI both wrap each
-- file), hence no CREATE INDEX CONCURRENTLY: the tables are small enough for a brief lock.

-- ---------------------------------------------------------------------------------------------
-- Tables, as the seed defines them (fresh databases). Order follows the foreign keys:
-- works references templates and files; generation_jobs references works.
-- ---------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.templates (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    template_name text,
    is_active     boolean DEFAULT false
);

CREATE TABLE IF NOT EXISTS public.files (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL,
    bucket_id  text,
    path       text,
    width      integer,
    height     integer,
    file_url   text,
    created_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.works (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL,
    template_id         uuid NOT NULL REFERENCES public.templates (id),
    input_data          jsonb,
    status              text DEFAULT 'pending',
    runpod_job_id       text,
    generation_metadata jsonb,
    output_file_id      uuid REFERENCES public.files (id),
    thumbnail_file_id   uuid REFERENCES public.files (id),
    title               text,
    output_data_json    jsonb,
    tags                text[],
    error_message       text,
    created_at          timestamptz DEFAULT now(),
    completed_at        timestamptz,
    failed_at           timestamptz,
    cancelled_at        timestamptz
);

CREATE TABLE IF NOT EXISTS public.generation_jobs (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    work_id    uuid NOT NULL REFERENCES public.works (id),
    status     text DEFAULT 'pending',
    taken_at   timestamptz,
    priority   integer DEFAULT 0,
    created_at timestamptz DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Every seed column again, for an older production table that lacks some. They are added
-- nullable: NOT NULL without a default cannot be added to a table that has rows, and the
-- foreign keys are only attached when the column itself is new (IF NOT EXISTS skips the whole
-- clause otherwise). `id` is not repeated: a table without it is not the seed's table.
-- Existing `timestamp` columns keep their type; new ones are timestamptz.
-- ---------------------------------------------------------------------------------------------

ALTER TABLE public.templates
    ADD COLUMN IF NOT EXISTS template_name text,
    ADD COLUMN IF NOT EXISTS is_active     boolean DEFAULT false;

ALTER TABLE public.files
    ADD COLUMN IF NOT EXISTS user_id    uuid,
    ADD COLUMN IF NOT EXISTS bucket_id  text,
    ADD COLUMN IF NOT EXISTS path       text,
    ADD COLUMN IF NOT EXISTS width      integer,
    ADD COLUMN IF NOT EXISTS height     integer,
    ADD COLUMN IF NOT EXISTS file_url   text,
    ADD COLUMN IF NOT EXISTS created_at timestamptz DEFAULT now();

ALTER TABLE public.works
    ADD COLUMN IF NOT EXISTS user_id             uuid,
    ADD COLUMN IF NOT EXISTS template_id         uuid REFERENCES public.templates (id),
    ADD COLUMN IF NOT EXISTS input_data          jsonb,
    ADD COLUMN IF NOT EXISTS status              text DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS runpod_job_id       text,
    ADD COLUMN IF NOT EXISTS generation_metadata jsonb,
    ADD COLUMN IF NOT EXISTS output_file_id      uuid REFERENCES public.files (id),
    ADD COLUMN IF NOT EXISTS thumbnail_file_id   uuid REFERENCES public.files (id),
    ADD COLUMN IF NOT EXISTS title               text,
    ADD COLUMN IF NOT EXISTS output_data_json    jsonb,
    ADD COLUMN IF NOT EXISTS tags                text[],
    ADD COLUMN IF NOT EXISTS error_message       text,
    ADD COLUMN IF NOT EXISTS created_at          timestamptz DEFAULT now(),
    ADD COLUMN IF NOT EXISTS completed_at        timestamptz,
    ADD COLUMN IF NOT EXISTS failed_at           timestamptz,
    ADD COLUMN IF NOT EXISTS cancelled_at        timestamptz,
    -- Not in the seed: lets the web app and operators see when a work last moved.
    ADD COLUMN IF NOT EXISTS updated_at          timestamptz DEFAULT now();

ALTER TABLE public.generation_jobs
    ADD COLUMN IF NOT EXISTS work_id          uuid REFERENCES public.works (id),
    ADD COLUMN IF NOT EXISTS status           text DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS taken_at         timestamptz,
    ADD COLUMN IF NOT EXISTS priority         integer DEFAULT 0,
    ADD COLUMN IF NOT EXISTS created_at       timestamptz DEFAULT now(),
    -- Reliability (not in the seed). Submissions so far; a resubmission after RunPod forgot a
    -- job counts here.
    ADD COLUMN IF NOT EXISTS attempts         integer NOT NULL DEFAULT 0,
    -- Transient failures so far (RunPod or OpenRouter down, rate limits): the retry backoff grows
    -- with it.
    ADD COLUMN IF NOT EXISTS retries          integer NOT NULL DEFAULT 0,
    -- The orchestrator process holding the job; every write after the claim is fenced on it.
    ADD COLUMN IF NOT EXISTS locked_by        text,
    -- Renewed while the holder lives; once past, any process may claim the job again.
    ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
    -- A pending job is not claimed before this (retry backoff).
    ADD COLUMN IF NOT EXISTS not_before       timestamptz,
    ADD COLUMN IF NOT EXISTS last_error       text,
    ADD COLUMN IF NOT EXISTS finished_at      timestamptz,
    -- Set together with runpod_job_id; the job deadline counts from here.
    ADD COLUMN IF NOT EXISTS submitted_at     timestamptz,
    -- The orchestrator's own copy of the RunPod id: users may update their works row (to
    -- cancel), so the id the orchestrator acts on must live where only it writes.
    ADD COLUMN IF NOT EXISTS runpod_job_id    text,
    -- Per-job secret in RunPod's completion webhook URL (/runpod/webhook/{token}).
    ADD COLUMN IF NOT EXISTS webhook_token    text,
    ADD COLUMN IF NOT EXISTS updated_at       timestamptz DEFAULT now();

-- The seed's ids have no default; give them one where they have none, so inserts (the
-- orchestrator's files rows, `klein submit`) need not invent ids. An existing default is kept.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['templates', 'files', 'works', 'generation_jobs'] LOOP
        IF EXISTS (
            SELECT 1 FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = t AND column_name = 'id'
              AND column_default IS NULL
        ) THEN
            EXECUTE format('ALTER TABLE public.%I ALTER COLUMN id SET DEFAULT gen_random_uuid()', t);
        END IF;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Indexes for the claim query:
--   ... WHERE w.template_id = $tpl AND t.is_active
--         AND ((j.status = 'pending' AND (j.not_before IS NULL OR j.not_before <= now()))
--              OR (j.status = 'taken' AND j.lease_expires_at < now()))
--       ORDER BY j.priority DESC, j.created_at ASC FOR UPDATE OF j SKIP LOCKED LIMIT n
-- Partial indexes keep them the size of the live queue, not of the whole history.
-- ---------------------------------------------------------------------------------------------

-- Pending jobs in claim order.
CREATE INDEX IF NOT EXISTS generation_jobs_pending_claim_idx
    ON public.generation_jobs (priority DESC, created_at)
    WHERE status = 'pending';

-- Taken jobs whose holder died (lease expired) are claimable again.
CREATE INDEX IF NOT EXISTS generation_jobs_taken_lease_idx
    ON public.generation_jobs (lease_expires_at)
    WHERE status = 'taken';

-- Join from works to their jobs (cancellation, status, RLS's "own jobs" check).
CREATE INDEX IF NOT EXISTS generation_jobs_work_id_idx
    ON public.generation_jobs (work_id);

-- The claim's template filter.
CREATE INDEX IF NOT EXISTS works_template_id_idx
    ON public.works (template_id);

-- Looking a work up by its RunPod job (webhooks, operators).
CREATE INDEX IF NOT EXISTS works_runpod_job_id_idx
    ON public.works (runpod_job_id)
    WHERE runpod_job_id IS NOT NULL;

-- RunPod's completion webhook finds its job by token; unique so a token names one job.
CREATE UNIQUE INDEX IF NOT EXISTS generation_jobs_webhook_token_key
    ON public.generation_jobs (webhook_token)
    WHERE webhook_token IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Wake the orchestrator when a job is inserted (LISTEN generation_job_created). The payload is
-- just the id, as the seed's own pg_notify; the listener only wakes the claimer, so a lost or
-- duplicate notification is harmless (the sweep catches up).
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.notify_generation_job_created()
RETURNS trigger
LANGUAGE plpgsql
-- A fixed search path, so a caller's search_path cannot redirect the calls below.
SET search_path = ''
AS $$
BEGIN
    PERFORM pg_notify('generation_job_created', json_build_object('id', NEW.id)::text);
    RETURN NULL;
END
$$;

-- CREATE OR REPLACE TRIGGER needs PG14; drop and create works on every version.
DROP TRIGGER IF EXISTS generation_job_created_notify ON public.generation_jobs;
CREATE TRIGGER generation_job_created_notify
    AFTER INSERT ON public.generation_jobs
    FOR EACH ROW
    EXECUTE FUNCTION public.notify_generation_job_created();

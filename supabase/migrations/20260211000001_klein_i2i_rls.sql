-- Klein I2I: row level security for the web app's users.
--
-- The orchestrator connects as the tables' owner (or a superuser), which RLS does not restrict;
-- these policies govern the web app's roles (anon, authenticated) through PostgREST.
-- Policies are permissive, so adding ours only ever grants; existing production policies stay.

-- ---------------------------------------------------------------------------------------------
-- Plain PostgreSQL (development, CI): provide what Supabase provides, so the same policies load
-- and can be tested. On Supabase the `auth` schema exists and this block touches nothing: not
-- the schema, the roles, nor the grants (a project may have tightened them on purpose).
-- ---------------------------------------------------------------------------------------------

DO $outer$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth') THEN
        RETURN;
    END IF;

    CREATE SCHEMA auth;

    -- As Supabase defines them: PostgREST puts the verified JWT in request.jwt.claims (older
    -- versions used request.jwt.claim and request.jwt.claim.sub); missing settings give NULL.
    CREATE FUNCTION auth.uid() RETURNS uuid
    LANGUAGE sql STABLE
    AS $f$
        SELECT coalesce(
            nullif(current_setting('request.jwt.claim.sub', true), ''),
            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
    $f$;

    CREATE FUNCTION auth.jwt() RETURNS jsonb
    LANGUAGE sql STABLE
    AS $f$
        SELECT coalesce(
            nullif(current_setting('request.jwt.claim', true), ''),
            nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
    $f$;

    -- Roles are cluster-wide: another database on this server may have made them already,
    -- possibly at this very moment, hence the duplicate_object guard. NOLOGIN like Supabase's:
    -- sessions reach them with SET ROLE. service_role bypasses RLS, as on Supabase.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        BEGIN
            CREATE ROLE anon NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        BEGIN
            CREATE ROLE authenticated NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        BEGIN
            CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END;
    END IF;

    -- Supabase's defaults: the API roles may use both schemas and have every table privilege on
    -- public's tables; RLS, not grants, decides which rows they reach.
    GRANT USAGE ON SCHEMA auth, public TO anon, authenticated, service_role;
    GRANT EXECUTE ON FUNCTION auth.uid(), auth.jwt() TO anon, authenticated, service_role;
    GRANT SELECT, INSERT, UPDATE, DELETE
        ON public.templates, public.files, public.works, public.generation_jobs
        TO anon, authenticated, service_role;
END
$outer$;

-- Idempotent: enabling twice is a no-op. Without a matching policy a table shows nothing.
ALTER TABLE public.templates       ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.files           ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.works           ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.generation_jobs ENABLE ROW LEVEL SECURITY;

-- CREATE POLICY has no IF NOT EXISTS (PG15), so each is guarded on pg_policies. An existing
-- policy of the same name is left as it is.

-- The seed's three policies, verbatim.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                   AND tablename = 'works' AND policyname = 'Users see own work') THEN
        CREATE POLICY "Users see own work" ON public.works
            FOR SELECT USING (auth.uid() = user_id);
    END IF;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                   AND tablename = 'files' AND policyname = 'Users see own files') THEN
        CREATE POLICY "Users see own files" ON public.files
            FOR SELECT USING (auth.uid() = user_id);
    END IF;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                   AND tablename = 'works' AND policyname = 'Service role updates work') THEN
        CREATE POLICY "Service role updates work" ON public.works
            FOR UPDATE USING (auth.jwt() ->> 'role' = 'service_role');
    END IF;
END
$$;

-- Users follow their job's progress (queue position, attempts): a job is theirs when its work is.
-- Read-only: users get no UPDATE on jobs, so the columns the orchestrator acts on (lease, owner,
-- runpod_job_id, webhook_token, priority) are written by the orchestrator alone.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                   AND tablename = 'generation_jobs' AND policyname = 'Users see own jobs') THEN
        CREATE POLICY "Users see own jobs" ON public.generation_jobs
            FOR SELECT USING (
                EXISTS (SELECT 1 FROM public.works w
                        WHERE w.id = generation_jobs.work_id AND w.user_id = auth.uid())
            );
    END IF;
END
$$;

-- Users cancel their own unfinished work: the web app's cancel button sets works.status to
-- 'cancelled' and the orchestrator does the rest (RunPod /cancel, cancelled_at, the job row).
-- USING: only their own row, and only while it can still be cancelled (a finished work stays
-- finished). WITH CHECK: the new row is still theirs and 'cancelled'; any other status, e.g.
-- 'completed', is refused. RLS cannot limit which columns change, so the orchestrator trusts
-- nothing else a user can write on works: it acts on its own copies in generation_jobs.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                   AND tablename = 'works' AND policyname = 'Users cancel own work') THEN
        CREATE POLICY "Users cancel own work" ON public.works
            FOR UPDATE
            USING (auth.uid() = user_id AND status IN ('pending', 'taken', 'processing'))
            WITH CHECK (auth.uid() = user_id AND status = 'cancelled');
    END IF;
END
$$;

-- The web app lists what can be ordered: active templates, to anyone (signed in or not).
-- Inactive ones stay hidden.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'public'
                   AND tablename = 'templates' AND policyname = 'Anyone sees active templates') THEN
        CREATE POLICY "Anyone sees active templates" ON public.templates
            FOR SELECT USING (is_active);
    END IF;
END
$$;

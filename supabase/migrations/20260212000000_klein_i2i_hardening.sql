-- Klein I2I: the data's defences (docs/security.md, "Data").
--
-- 1. CHECK constraints: statuses from the state diagram only, a bounded priority.
-- 2. The seed's "Service role updates work" trusted a JWT claim that any session can set on
--    plain PostgreSQL (set_config('request.jwt.claims', ...)); it now names the database role.
-- 3. A user's cancel changes the status (and its timestamps) only, enforced by a trigger.
--
-- Idempotent: every statement is guarded or replaces its own object, so running the file again
-- (with or without our migration history) changes nothing.

-- ---------------------------------------------------------------------------------------------
-- 1. CHECK constraints. Added NOT VALID (new and updated rows are checked at once, without a
-- full-table lock), then validated. A production table holding legacy rows that break a rule
-- keeps the constraint NOT VALID (still enforced on every write) and the migration says so,
-- instead of failing the deploy over old history. NULL passes, as the seed's columns allow it.
-- Priority: the app uses 0 and small numbers (`klein submit --priority`); +-1000 leaves room.
-- ---------------------------------------------------------------------------------------------

DO $$
DECLARE
    rule record;
BEGIN
    FOR rule IN
        SELECT * FROM (VALUES
            ('generation_jobs', 'generation_jobs_status_valid',
             $c$CHECK (status IN ('pending', 'taken', 'completed', 'failed', 'cancelled'))$c$),
            ('generation_jobs', 'generation_jobs_priority_range',
             $c$CHECK (priority BETWEEN -1000 AND 1000)$c$),
            ('works', 'works_status_valid',
             $c$CHECK (status IN ('pending', 'taken', 'processing', 'completed', 'failed',
                                  'cancelled'))$c$)
        ) AS r (tbl, name, definition)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = format('public.%I', rule.tbl)::regclass
                         AND conname = rule.name) THEN
            EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I %s NOT VALID',
                           rule.tbl, rule.name, rule.definition);
        END IF;
        BEGIN
            EXECUTE format('ALTER TABLE public.%I VALIDATE CONSTRAINT %I', rule.tbl, rule.name);
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE '%: existing rows break it; it stays NOT VALID (new writes are checked)',
                rule.name;
        END;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 2. The service role's policy checks the database role. `TO service_role` is decided by the
-- role the session runs as (PostgREST switches to it only for a service-role key it verified),
-- not by a claim. WITH CHECK states what the new row may be (anything, for the service role).
-- service_role has BYPASSRLS on Supabase and in 20260211000001, so this policy only matters
-- where that attribute was removed; what it no longer does is let anon or authenticated in.
-- ---------------------------------------------------------------------------------------------

DROP POLICY IF EXISTS "Service role updates work" ON public.works;
CREATE POLICY "Service role updates work" ON public.works
    FOR UPDATE TO service_role
    USING (true)
    WITH CHECK (true);

-- ---------------------------------------------------------------------------------------------
-- 3. A user's update of works changes status, cancelled_at and updated_at only. RLS decides
-- rows, not columns, so the "Users cancel own work" policy alone lets a cancel also rewrite
-- output_file_id (pointing at another user's file), title, output_data_json, input_data,
-- template_id. Why a trigger and not column-level GRANTs: it holds the same on Supabase and on
-- plain PostgreSQL whatever the grants are. Supabase grants ALL on public's tables to anon and
-- authenticated by default privileges, and a later `GRANT ALL ... TO authenticated` (dashboard,
-- another migration) would silently undo a column grant; a trigger stays until it is dropped.
-- It is also a whitelist over the whole row (to_jsonb), so columns added later are covered.
-- The web app's roles only (anon, authenticated): the orchestrator (table owner) and
-- service_role are not restricted.
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.works_user_update_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    allowed constant text[] := ARRAY['status', 'cancelled_at', 'updated_at'];
BEGIN
    IF current_user IN ('anon', 'authenticated')
       AND (to_jsonb(NEW) - allowed) IS DISTINCT FROM (to_jsonb(OLD) - allowed) THEN
        RAISE EXCEPTION 'users may change only status (to cancel) on works'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS works_user_update_guard ON public.works;
CREATE TRIGGER works_user_update_guard
    BEFORE UPDATE ON public.works
    FOR EACH ROW
    EXECUTE FUNCTION public.works_user_update_guard();

-- The orchestrator's SQL, one named query per block ("-- name: x"); loaded by orchestrator/db.py.
-- Every write after the claim is fenced on locked_by, so a process that lost its lease cannot
-- move a job; every transition names the status it expects, and zero rows means someone else
-- moved it first.

-- name: claim_jobs
-- Take up to `limit` jobs of the Klein template: pending ones that are due, and taken ones whose
-- holder stopped renewing its lease (a dead replica). Highest priority first, then oldest.
WITH picked AS (
    SELECT j.id
    FROM generation_jobs j
    JOIN works w ON w.id = j.work_id
    JOIN templates t ON t.id = w.template_id
    WHERE w.template_id = %(template_id)s
      AND t.is_active
      AND ((j.status = 'pending' AND (j.not_before IS NULL OR j.not_before <= now()))
           OR (j.status = 'taken' AND j.lease_expires_at < now()))
      -- One job of a work at a time (a web app that inserted twice): none while another is
      -- taken, and of pending ones only the oldest; the rest wait, and once the work has ended
      -- they end without a GPU run.
      AND NOT EXISTS (
          SELECT 1 FROM generation_jobs o
          WHERE o.work_id = j.work_id AND o.id <> j.id
            AND (o.status = 'taken'
                 OR (o.status = 'pending' AND j.status = 'pending'
                     AND (o.created_at, o.id) < (j.created_at, j.id)))
      )
    ORDER BY j.priority DESC, j.created_at ASC
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
),
claimed AS (
    UPDATE generation_jobs j
    SET status = 'taken',
        taken_at = CASE WHEN j.status = 'pending' THEN now() ELSE j.taken_at END,
        -- the claim wait, from when the job was due to now (its dashboard timing); a lease taken
        -- over keeps the first holder's
        timings = CASE WHEN j.status = 'pending' THEN coalesce(j.timings, '{}'::jsonb)
            || jsonb_build_object('claim', greatest(0, round(
                extract(epoch FROM now() - greatest(j.created_at, j.not_before)) * 1000))::bigint)
            ELSE j.timings END,
        abandoned = j.abandoned + CASE WHEN j.status = 'taken' THEN 1 ELSE 0 END,
        locked_by = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        updated_at = now()
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.work_id, j.runpod_job_id, j.submitted_at, j.submit_started_at,
              j.attempts, j.retries, j.abandoned
),
marked AS (
    UPDATE works w
    SET status = 'taken', updated_at = now()
    FROM claimed c
    WHERE w.id = c.work_id AND w.status = 'pending'
    RETURNING w.id
)
SELECT c.id, c.work_id, c.runpod_job_id, c.submitted_at, c.submit_started_at, c.attempts,
       c.retries, c.abandoned,
       w.user_id, w.input_data, w.status AS work_status, w.generation_metadata
FROM claimed c
JOIN works w ON w.id = c.work_id;

-- name: renew_leases
-- One statement a heartbeat: the jobs this process is driving now (a live task each) get a fresh
-- lease. The ids returned are the ones it still holds; any other of the given jobs was lost.
UPDATE generation_jobs
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
WHERE id = ANY(%(job_ids)s::uuid[]) AND locked_by = %(worker_id)s AND status = 'taken'
RETURNING id;

-- name: release_job
-- Hand a job over at shutdown: its lease ends now, so another process resumes it at once.
UPDATE generation_jobs
SET lease_expires_at = now() - interval '1 second', updated_at = now()
WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
RETURNING id;

-- name: retry_later
-- A failure worth retrying: back to pending, due again after a delay. `spend` is what it costs
-- the job's retry budget (0 while it waits for an operator). A job already submitted keeps its
-- runpod_job_id and resumes by awaiting it.
UPDATE generation_jobs
SET status = 'pending', locked_by = NULL, lease_expires_at = NULL,
    retries = retries + %(spend)s,
    submit_started_at = CASE WHEN %(submission_unknown)s THEN submit_started_at END,
    not_before = now() + make_interval(secs => %(delay_s)s),
    last_error = %(error)s, updated_at = now()
WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
RETURNING id;

-- name: cancelled_jobs
-- Which of the given in-flight jobs, still this worker's, the user cancelled (the work or the job
-- row set cancelled).
SELECT j.id, j.runpod_job_id
FROM generation_jobs j
JOIN works w ON w.id = j.work_id
WHERE j.id = ANY(%(job_ids)s::uuid[]) AND j.locked_by = %(worker_id)s
  AND (w.status = 'cancelled' OR j.status = 'cancelled');

-- name: begin_submission
-- Before `/run`: the job's webhook token (kept across submissions, in generation_job_tokens where
-- users cannot read it) and the metadata of what is about to be sent. A RunPod job whose id never
-- got recorded (a crash during `/run`) still calls back with this token, so its result can be
-- adopted or cancelled.
WITH job AS (
    UPDATE generation_jobs
    SET submit_started_at = now(), updated_at = now()
    WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
      AND runpod_job_id IS NULL
    RETURNING id
),
token AS (
    INSERT INTO generation_job_tokens (job_id, webhook_token)
    SELECT id, %(webhook_token)s FROM job
    ON CONFLICT (job_id) DO UPDATE SET webhook_token = generation_job_tokens.webhook_token
    RETURNING webhook_token
),
work AS (
    UPDATE works
    SET generation_metadata = %(metadata)s, updated_at = now()
    WHERE id = %(work_id)s AND status IN ('pending', 'taken', 'processing')
      AND EXISTS (SELECT 1 FROM job)
    RETURNING id
)
SELECT token.webhook_token, (SELECT count(*) FROM work) AS works FROM token;

-- name: record_submission
-- Right after RunPod accepted the job, one statement (one round trip): its id on the job, so a
-- restart resumes instead of resubmitting, and the work `processing` with it. The job row is
-- locked and checked first; nothing is written unless the job is still this worker's, unrecorded,
-- and its work still in progress. `mine` 0: fenced out, or a completion webhook already adopted
-- another submission; `submitted_at` NULL with `mine` 1: the work is no longer in progress.
WITH mine AS (
    SELECT id FROM generation_jobs
    WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
      AND runpod_job_id IS NULL
    FOR UPDATE
),
work AS (
    UPDATE works
    SET status = 'processing', runpod_job_id = %(runpod_job_id)s, updated_at = now()
    WHERE id = %(work_id)s AND status IN ('pending', 'taken', 'processing')
      AND EXISTS (SELECT 1 FROM mine)
    RETURNING id
),
job AS (
    UPDATE generation_jobs j
    SET runpod_job_id = %(runpod_job_id)s, submitted_at = now(), attempts = j.attempts + 1,
        submit_started_at = NULL, last_error = NULL, updated_at = now()
    FROM mine, work
    WHERE j.id = mine.id
    RETURNING j.submitted_at
)
SELECT (SELECT count(*) FROM mine) AS mine, (SELECT submitted_at FROM job) AS submitted_at;

-- name: held_submission
-- The RunPod job recorded for a job this process holds (one a webhook adopted meanwhile).
SELECT runpod_job_id, submitted_at
FROM generation_jobs
WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
  AND runpod_job_id IS NOT NULL;

-- name: adopt_submission
-- A completion webhook for a RunPod job nobody recorded (its submitter died during `/run`) while
-- the job still waits: that job is its result. The job becomes due now and resumes by awaiting it.
WITH job AS (
    UPDATE generation_jobs
    SET runpod_job_id = %(runpod_job_id)s, submitted_at = now(), attempts = attempts + 1,
        submit_started_at = NULL, not_before = NULL, last_error = NULL, updated_at = now()
    WHERE id = (SELECT job_id FROM generation_job_tokens WHERE webhook_token = %(token)s)
      AND runpod_job_id IS NULL AND status IN ('pending', 'taken')
      -- Never a RunPod job another job recorded: its result is that job's user's image.
      AND NOT EXISTS (
          SELECT 1 FROM generation_jobs o WHERE o.runpod_job_id = %(runpod_job_id)s
      )
    RETURNING id, work_id
)
UPDATE works w
SET status = 'processing', runpod_job_id = %(runpod_job_id)s, updated_at = now()
FROM job
WHERE w.id = job.work_id AND w.status IN ('pending', 'taken', 'processing')
RETURNING job.id;

-- name: runpod_job_holder
-- Another job that recorded this RunPod job, if any: a webhook naming it under some other job's
-- token must leave it alone.
SELECT id FROM generation_jobs
WHERE runpod_job_id = %(runpod_job_id)s AND id <> %(job_id)s
LIMIT 1;

-- name: job_submission
-- Current RunPod job of a job (for a cancellation that must reach RunPod).
SELECT runpod_job_id FROM generation_jobs WHERE id = %(job_id)s;

-- name: record_progress
-- What the job's RunPod worker is doing now, on its work for the web app and `klein submit
-- --wait` (shape in migration 20260214000000). Fenced like every job write; updated_at is left
-- alone, since this is no change of state. Zero rows: fenced out, or the work already ended.
UPDATE works w
SET progress = %(progress)s
FROM generation_jobs j
WHERE j.id = %(job_id)s AND j.locked_by = %(worker_id)s AND j.status = 'taken'
  AND w.id = j.work_id AND w.status IN ('taken', 'processing')
RETURNING w.id;

-- name: forget_submission
-- RunPod no longer knows the job (its result expired): submit again, counted in attempts.
UPDATE generation_jobs
SET runpod_job_id = NULL, submitted_at = NULL, last_error = %(error)s, updated_at = now()
WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
RETURNING id;

-- name: complete_job
-- Finalize, one statement and so one transaction and one round trip (BEGIN, four statements and
-- COMMIT made six, each a network latency away from a remote database): the output's files row
-- (its id derived from the work, so finalizing twice writes one row), the completed work, and the
-- completed job with its timings merged (as record_timings does). All or nothing, and nothing
-- unless the job is still this worker's and its work still in progress; `completed` says whether
-- it was written.
WITH mine AS (
    SELECT id FROM generation_jobs
    WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
    FOR UPDATE
),
work AS (
    UPDATE works
    SET status = 'completed', output_file_id = %(file_id)s, thumbnail_file_id = %(file_id)s,
        title = %(title)s, output_data_json = %(output_data)s, tags = %(tags)s,
        generation_metadata = coalesce(generation_metadata, '{}'::jsonb) || %(metadata_patch)s,
        error_message = NULL, progress = NULL, completed_at = now(), updated_at = now()
    WHERE id = %(work_id)s AND status IN ('taken', 'processing') AND EXISTS (SELECT 1 FROM mine)
    RETURNING id
),
file AS (
    INSERT INTO files (id, user_id, bucket_id, path, width, height, file_url)
    SELECT %(file_id)s, %(user_id)s, %(bucket_id)s, %(path)s, %(width)s, %(height)s,
           %(file_url)s
    FROM work
    ON CONFLICT (id) DO UPDATE
    SET width = EXCLUDED.width, height = EXCLUDED.height, file_url = EXCLUDED.file_url
    RETURNING id
),
job AS (
    UPDATE generation_jobs j
    SET status = 'completed', finished_at = now(), last_error = NULL, lease_expires_at = NULL,
        updated_at = now(),
        timings = coalesce(j.timings, '{}'::jsonb) || %(timings)s
    FROM mine, work
    WHERE j.id = mine.id
    RETURNING j.id
)
SELECT (SELECT count(*) FROM job) = 1 AND (SELECT count(*) FROM file) = 1 AS completed;

-- name: work_status
SELECT status FROM works WHERE id = %(work_id)s;

-- name: fail_job
-- The work failed with the message and the job failed, one statement: nothing unless the job is
-- still this worker's. Its row is locked first, as by every statement that writes a job and its
-- work, so that two of them never wait on each other in opposite order (a deadlock). A work that
-- already ended (the user cancelled it) keeps its status. No row: fenced out, or the user
-- cancelled the job row (the flow then cancels instead).
WITH mine AS (
    SELECT id FROM generation_jobs
    WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
    FOR UPDATE
),
work AS (
    UPDATE works
    SET status = 'failed', error_message = %(error)s, progress = NULL, failed_at = now(),
        updated_at = now()
    WHERE id = %(work_id)s AND status IN ('pending', 'taken', 'processing')
      AND EXISTS (SELECT 1 FROM mine)
    RETURNING id
)
UPDATE generation_jobs j
SET status = 'failed', finished_at = now(), last_error = %(error)s, lease_expires_at = NULL,
    updated_at = now()
FROM mine
WHERE j.id = mine.id
RETURNING j.id;

-- name: cancel_job
-- The user's cancellation, one statement as fail_job: the work cancelled (the web app may have
-- set it already, or the job row instead) and the job cancelled, nothing unless the job is still
-- this worker's, its row locked first. No row: fenced out.
WITH mine AS (
    SELECT id FROM generation_jobs
    WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status IN ('taken', 'cancelled')
    FOR UPDATE
),
work AS (
    UPDATE works
    SET status = 'cancelled', cancelled_at = coalesce(cancelled_at, now()), progress = NULL,
        updated_at = now()
    WHERE id = %(work_id)s AND status IN ('pending', 'taken', 'processing', 'cancelled')
      AND EXISTS (SELECT 1 FROM mine)
    RETURNING id
)
UPDATE generation_jobs j
SET status = 'cancelled', finished_at = now(), last_error = NULL, lease_expires_at = NULL,
    updated_at = now()
FROM mine
WHERE j.id = mine.id
RETURNING j.id;

-- name: finish_job
-- The job's terminal status, fenced: only the holder may end it, and not over the user's
-- cancellation of the job row.
UPDATE generation_jobs
SET status = %(status)s, finished_at = now(), last_error = %(error)s,
    lease_expires_at = NULL, updated_at = now()
WHERE id = %(job_id)s AND locked_by = %(worker_id)s AND status = 'taken'
RETURNING id;

-- name: settle_unclaimed_cancellations
-- Cancellations that no live process will see: a pending job whose work was cancelled, and a
-- work still in progress whose latest job the user cancelled (the job row) while nobody alive
-- held it (never claimed, or its holder's lease ran out). Both rows end cancelled, cancelled_at
-- set once; a job a live process holds is left to it. The job rows are locked first, skipping
-- any a writer holds (the next sweep sees them), as every statement writing both locks them.
-- One row per job settled, with the RunPod job it had, for the caller to cancel there too.
WITH pending_of_cancelled AS (
    SELECT j.id, j.work_id, j.runpod_job_id
    FROM generation_jobs j
    JOIN works w ON w.id = j.work_id
    WHERE j.status = 'pending' AND w.status = 'cancelled'
    FOR UPDATE OF j SKIP LOCKED
),
cancelled_of_unfinished AS (
    -- from the unfinished works (their partial index), not from every job ever cancelled
    SELECT j.id, j.work_id, j.runpod_job_id
    FROM works w
    JOIN generation_jobs j ON j.work_id = w.id
    WHERE w.status IN ('pending', 'taken', 'processing') AND j.status = 'cancelled'
      AND (j.lease_expires_at IS NULL OR j.lease_expires_at < now())
      AND NOT EXISTS (SELECT 1 FROM generation_jobs later
                      WHERE later.work_id = j.work_id AND later.created_at > j.created_at)
    FOR UPDATE OF j SKIP LOCKED
),
due AS (
    SELECT * FROM pending_of_cancelled
    UNION ALL
    SELECT * FROM cancelled_of_unfinished
),
jobs AS (
    UPDATE generation_jobs j
    SET status = 'cancelled', finished_at = coalesce(j.finished_at, now()), lease_expires_at = NULL,
        updated_at = now()
    FROM due
    WHERE j.id = due.id
    RETURNING j.id
),
works_done AS (
    UPDATE works w
    SET status = 'cancelled', cancelled_at = coalesce(w.cancelled_at, now()), progress = NULL,
        updated_at = now()
    FROM due
    WHERE w.id = due.work_id AND w.status IN ('pending', 'taken', 'processing', 'cancelled')
    RETURNING w.id
)
SELECT due.id::text AS job_id, due.runpod_job_id,
       (SELECT count(*) FROM works_done) AS works
FROM due;

-- name: job_by_webhook_token
SELECT j.id, j.runpod_job_id, j.status
FROM generation_job_tokens t
JOIN generation_jobs j ON j.id = t.job_id
WHERE t.webhook_token = %(token)s;

-- name: job_for_intake
-- What a webhook may say about a job id: whether it is ours and still waiting.
SELECT j.id, j.status, w.template_id
FROM generation_jobs j
JOIN works w ON w.id = j.work_id
WHERE j.id = %(job_id)s;

-- name: insert_work
INSERT INTO works (id, user_id, template_id, input_data, status)
VALUES (%(work_id)s, %(user_id)s, %(template_id)s, %(input_data)s, 'pending')
RETURNING id;

-- name: insert_job
INSERT INTO generation_jobs (id, work_id, status, priority)
VALUES (%(job_id)s, %(work_id)s, 'pending', %(priority)s)
RETURNING id;

-- name: job_status
-- The job by its id, else the newest job of the work by that id. Each branch is one index
-- lookup; `j.id = X OR w.id = X` over the join read every job (250 ms at 600k).
SELECT j.id AS job_id, j.status AS job_status, j.attempts, j.last_error, j.runpod_job_id,
       w.id AS work_id, w.status AS work_status, w.title, w.error_message, w.output_data_json,
       w.generation_metadata, w.created_at, w.completed_at, w.failed_at, w.cancelled_at,
       w.progress
FROM (
    (SELECT * FROM generation_jobs WHERE id = %(id)s)
    UNION ALL
    (SELECT * FROM generation_jobs WHERE work_id = %(id)s ORDER BY created_at DESC LIMIT 1)
) j
JOIN works w ON w.id = j.work_id
ORDER BY j.created_at DESC
LIMIT 1;

-- name: recent_jobs
SELECT j.id AS job_id, w.id AS work_id, j.status AS job_status, w.status AS work_status, w.title,
       w.error_message, w.output_data_json->>'image_url' AS image_url, j.created_at
FROM generation_jobs j
JOIN works w ON w.id = j.work_id
ORDER BY j.created_at DESC
LIMIT %(limit)s;

-- ---------------------------------------------------------------------------------------------
-- The operator's commands (`klein cancel`, `klein retry`, `klein jobs --stuck`) and id prefixes.

-- name: jobs_by_id_prefix
-- Jobs whose own id or whose work's id starts with a prefix, newest first; `job_matched` says
-- which id matched. The prefix comes as the range of ids that start with it (`low`..`high`,
-- console_ops.id_range), each branch a range of an index: a LIKE on the ids' text read every job.
SELECT j.id::text AS job_id, j.work_id::text AS work_id, j.job_matched
FROM (
    (SELECT id, work_id, created_at, true AS job_matched FROM generation_jobs
     WHERE id BETWEEN %(low)s AND %(high)s ORDER BY id LIMIT 50)
    UNION ALL
    (SELECT id, work_id, created_at, false FROM generation_jobs
     WHERE work_id BETWEEN %(low)s AND %(high)s ORDER BY work_id LIMIT 50)
) j
ORDER BY j.created_at DESC
LIMIT 50;

-- name: operator_cancel
-- Cancel a work that has not ended. Its job ends here too when nobody alive holds it (pending,
-- or taken with no lease or an expired one); a job a live process holds is left to that process,
-- which sees the cancellation, cancels the RunPod job and ends the job itself. The job's row is
-- locked first, before the work's, in the order of every other statement that writes both.
WITH held AS (
    SELECT id FROM generation_jobs WHERE id = %(job_id)s FOR UPDATE
),
work AS (
    UPDATE works
    SET status = 'cancelled', cancelled_at = coalesce(cancelled_at, now()), progress = NULL,
        updated_at = now()
    WHERE id = %(work_id)s AND status IN ('pending', 'taken', 'processing')
      AND EXISTS (SELECT 1 FROM held)
    RETURNING id
),
job AS (
    UPDATE generation_jobs
    SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL, updated_at = now()
    WHERE id = %(job_id)s AND EXISTS (SELECT 1 FROM work)
      AND (status = 'pending'
           OR (status = 'taken' AND (lease_expires_at IS NULL OR lease_expires_at < now())))
    RETURNING id
)
SELECT (SELECT count(*) FROM work) AS works, (SELECT count(*) FROM job) AS jobs;

-- name: operator_cancel_seen
-- After operator_cancel, in its transaction (the job's row still locked): the job and work as
-- they are now, read afresh, since the statement's own snapshot predates whatever the job's
-- holder committed while the statement waited for the row (a RunPod id it recorded, say).
SELECT j.runpod_job_id, j.locked_by, w.status AS work_status
FROM generation_jobs j
JOIN works w ON w.id = j.work_id
WHERE j.id = %(job_id)s;

-- name: operator_retry
-- A failed or cancelled work whose jobs have all ended gets a new pending job (the last job's
-- priority) and goes back to pending; zero rows: it is not in such a state.
WITH work AS (
    UPDATE works w
    SET status = 'pending', error_message = NULL, failed_at = NULL, cancelled_at = NULL,
        runpod_job_id = NULL, progress = NULL, updated_at = now()
    WHERE w.id = %(work_id)s AND w.status IN ('failed', 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM generation_jobs j
                      WHERE j.work_id = w.id AND j.status IN ('pending', 'taken'))
    RETURNING w.id
)
INSERT INTO generation_jobs (id, work_id, status, priority)
SELECT %(job_id)s, work.id, 'pending',
       coalesce((SELECT priority FROM generation_jobs WHERE work_id = work.id
                 ORDER BY created_at DESC LIMIT 1), 0)
FROM work
RETURNING id::text AS job_id;

-- name: work_state
SELECT w.status AS work_status,
       (SELECT count(*) FROM generation_jobs j
        WHERE j.work_id = w.id AND j.status IN ('pending', 'taken')) AS unfinished_jobs
FROM works w
WHERE w.id = %(work_id)s;

-- name: stuck_candidates
-- Unfinished jobs worth an operator's look: old, taken with no lease (rows the n8n workflow left),
-- leased by a holder whose lease expired, or waiting with an error. Oldest first; the reason is
-- decided in orchestrator/console_ops.py.
SELECT j.id::text AS job_id, j.work_id::text AS work_id, j.status, j.locked_by, j.last_error,
       j.runpod_job_id,
       extract(epoch FROM now() - j.created_at)::float AS age_s,
       extract(epoch FROM now() - j.lease_expires_at)::float AS lease_expired_s,
       j.lease_expires_at IS NULL AS no_lease,
       extract(epoch FROM j.not_before - now())::float AS due_in_s
FROM generation_jobs j
WHERE j.status IN ('pending', 'taken')
  AND (j.created_at < now() - make_interval(secs => %(older_than_s)s)
       OR (j.status = 'taken' AND (j.lease_expires_at IS NULL OR j.lease_expires_at < now()))
       OR (j.status = 'pending' AND j.last_error IS NOT NULL))
ORDER BY j.created_at ASC
LIMIT %(limit)s;

-- name: work_input
SELECT input_data FROM works WHERE id = %(work_id)s;

-- name: jobs_by_id
-- The same rows as jobs_by_id_prefix for a whole id: the job with that id and the jobs of the
-- work with that id, each branch an index lookup (an OR of the two over the join is a scan).
SELECT j.id::text AS job_id, j.work_id::text AS work_id, j.id = %(id)s AS job_matched
FROM (
    (SELECT id, work_id, created_at FROM generation_jobs WHERE id = %(id)s)
    UNION ALL
    (SELECT id, work_id, created_at FROM generation_jobs
     WHERE work_id = %(id)s AND id <> %(id)s ORDER BY created_at DESC LIMIT 50)
) j
ORDER BY j.created_at DESC
LIMIT 50;

-- name: record_timings
-- Stage durations in ms (orchestrator/timings.py), merged into what earlier writes recorded (the
-- claim wait, written by the claim). Fenced by the lease; a finished job keeps its holder, so
-- finalize's own time can still be added.
UPDATE generation_jobs
SET timings = coalesce(timings, '{}'::jsonb) || %(timings)s
WHERE id = %(job_id)s AND locked_by = %(worker_id)s
RETURNING id;

-- ---------------------------------------------------------------- the dashboard (read only)

-- name: dashboard_read_only
SET TRANSACTION READ ONLY;

-- name: dashboard_deadline
-- The dashboard's reads give up after two seconds rather than pile up behind a busy database.
SET LOCAL statement_timeout = 2000;

-- name: dashboard_queue
-- Unfinished jobs by where they stand (pending; taken = claimed; processing = on RunPod), with
-- how long since they were asked for; `delayed` are pending ones waiting out a retry delay.
-- The jobs in flight are few (each holds a lease): counted whole. The pending ones are a backlog
-- of any size, so each of their figures is counted along an index (the pending jobs by age, and
-- those waiting out a delay: migration 20260216000000) and stops one past the cap, whatever the
-- backlog: a figure over the cap means "more than that". Each job's template is looked up
-- through works' primary key (OFFSET 0 keeps that lookup per job: a join would be free to hash
-- every work ever made). NOT MATERIALIZED: each figure walks its own slice of the index.
WITH pending AS NOT MATERIALIZED (
    SELECT j.created_at, j.not_before
    FROM generation_jobs j
    CROSS JOIN LATERAL (SELECT w.template_id FROM works w WHERE w.id = j.work_id OFFSET 0) w
    WHERE j.status = 'pending' AND w.template_id = %(template_id)s
),
in_flight AS (
    SELECT CASE WHEN w.status = 'processing' THEN 'processing' ELSE 'taken' END AS stage,
           extract(epoch FROM now() - j.created_at)::float8 AS age_s
    FROM generation_jobs j
    JOIN works w ON w.id = j.work_id
    WHERE j.status = 'taken' AND w.template_id = %(template_id)s
)
SELECT 'pending' AS stage,
       (SELECT count(*) FROM (SELECT FROM pending LIMIT %(cap)s + 1) p) AS jobs,
       (SELECT extract(epoch FROM now() - created_at)::float8 FROM pending
        ORDER BY created_at LIMIT 1) AS oldest_s,
       (SELECT count(*) FROM (SELECT FROM pending WHERE not_before > now()
                              LIMIT %(cap)s + 1) p) AS delayed,
       (SELECT count(*) FROM (SELECT FROM pending WHERE created_at > now() - interval '1 minute'
                              LIMIT %(cap)s + 1) p) AS under_1m,
       (SELECT count(*) FROM (SELECT FROM pending
                              WHERE created_at <= now() - interval '1 minute'
                                AND created_at > now() - interval '5 minutes'
                              LIMIT %(cap)s + 1) p) AS from_1m_to_5m,
       (SELECT count(*) FROM (SELECT FROM pending
                              WHERE created_at <= now() - interval '5 minutes'
                                AND created_at > now() - interval '15 minutes'
                              LIMIT %(cap)s + 1) p) AS from_5m_to_15m,
       (SELECT count(*) FROM (SELECT FROM pending
                              WHERE created_at <= now() - interval '15 minutes'
                              LIMIT %(cap)s + 1) p) AS over_15m
UNION ALL
SELECT stage, count(*), max(age_s), 0,
       count(*) FILTER (WHERE age_s < 60),
       count(*) FILTER (WHERE age_s >= 60 AND age_s < 300),
       count(*) FILTER (WHERE age_s >= 300 AND age_s < 900),
       count(*) FILTER (WHERE age_s >= 900)
FROM in_flight
GROUP BY stage;

-- name: dashboard_latest_jobs
-- The latest jobs, newest first, with what a person wants to see of each (never the input image).
SELECT j.id AS job_id, w.id AS work_id, j.status AS job_status, w.status AS work_status,
       w.title, coalesce(f.file_url, w.output_data_json->>'image_url') AS thumbnail_url,
       coalesce(w.generation_metadata->>'original_prompt', w.input_data->>'prompt') AS prompt,
       w.generation_metadata->>'prompt' AS sent_prompt,
       w.generation_metadata->>'translation' AS translation,
       w.progress, j.timings, coalesce(w.error_message, j.last_error) AS error,
       j.attempts, j.retries, j.created_at, j.finished_at,
       extract(epoch FROM coalesce(j.finished_at, now()) - j.created_at)::float8 AS age_s
FROM generation_jobs j
JOIN works w ON w.id = j.work_id
LEFT JOIN files f ON f.id = w.thumbnail_file_id
WHERE w.template_id = %(template_id)s
ORDER BY j.created_at DESC
LIMIT %(limit)s;

-- name: dashboard_failures
-- Why works failed in the window, the most common reason first.
SELECT coalesce(nullif(w.error_message, ''), 'no reason recorded') AS reason,
       count(*) AS works, max(w.failed_at) AS last_at
FROM works w
WHERE w.template_id = %(template_id)s AND w.status = 'failed'
  AND w.failed_at > now() - make_interval(secs => %(window_s)s)
GROUP BY 1
ORDER BY works DESC, last_at DESC
LIMIT %(limit)s;

-- name: dashboard_throughput
-- Jobs that ended in the window, and the latency (asked for to finished) of the completed ones.
-- The window's jobs are few beside every work ever made: each finds its template through works'
-- primary key, as in dashboard_queue (a join hashed the whole works table: 50 ms at 400,000).
SELECT count(*) FILTER (WHERE j.status = 'completed') AS completed,
       count(*) FILTER (WHERE j.status = 'failed') AS failed,
       count(*) FILTER (WHERE j.status = 'cancelled') AS cancelled,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.finished_at - j.created_at))
           FILTER (WHERE j.status = 'completed') AS p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.finished_at - j.created_at))
           FILTER (WHERE j.status = 'completed') AS p95_s
FROM generation_jobs j
CROSS JOIN LATERAL (SELECT w.template_id FROM works w WHERE w.id = j.work_id OFFSET 0) w
WHERE j.finished_at > now() - make_interval(secs => %(window_s)s)
  AND w.template_id = %(template_id)s;

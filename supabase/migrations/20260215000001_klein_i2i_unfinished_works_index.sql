-- The unfinished works, indexed (additive, idempotent): the orchestrator's sweep looks for
-- cancellations among them every few seconds (settle_unclaimed_cancellations), and should not
-- read every work ever made to find the few in progress.
CREATE INDEX IF NOT EXISTS works_unfinished_idx
    ON public.works (id)
    WHERE status IN ('pending', 'taken', 'processing');

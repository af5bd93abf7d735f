-- Klein I2I: the template row the web app's works point at and the orchestrator claims for.
--
-- Inserted active when missing; an existing row is left exactly as it is (an operator may have
-- deactivated it, which is how the claimer is paused). The NOT EXISTS guard, not only
-- ON CONFLICT, keeps this from failing on a production templates table with more NOT NULL
-- columns than the seed lists: PostgreSQL checks NOT NULL before it looks for a conflict, and
-- with the guard no row is even formed when the template exists. ON CONFLICT still covers a
-- concurrent insert.
INSERT INTO public.templates (id, template_name, is_active)
SELECT '82064257-1bef-45d8-a6ba-715f33c887cc', 'XiCON_KLEIN_I2I', true
WHERE NOT EXISTS (
    SELECT 1 FROM public.templates WHERE id = '82064257-1bef-45d8-a6ba-715f33c887cc'
)
ON CONFLICT (id) DO NOTHING;

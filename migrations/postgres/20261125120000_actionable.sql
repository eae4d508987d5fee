-- segclust store, PostgreSQL dialect, third migration. Keep in step with migrations/sqlite.

-- The LLM's judgement whether a Task's segments show a problem to fix (false: ordinary use, which
-- `segclust tasks` and the report leave out unless asked). NULL: not judged (fallback labels,
-- and Tasks labelled before this migration).
ALTER TABLE tasks ADD COLUMN actionable BOOLEAN;

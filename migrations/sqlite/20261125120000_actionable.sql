-- segclust store, SQLite dialect, third migration. Keep in step with migrations/postgres.

-- The LLM's judgement whether a Task's segments show a problem to fix (false: ordinary use, which
-- `segclust tasks` and the report leave out unless asked). NULL: not judged (fallback labels,
-- and Tasks labelled before this migration). 0 / 1, as sqlx stores a bool.
ALTER TABLE tasks ADD COLUMN actionable INTEGER;

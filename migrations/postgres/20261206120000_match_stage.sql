-- segclust store, PostgreSQL dialect, fourth migration. Keep in step with migrations/sqlite.

-- Seconds a batch spent matching clusters and noise to Tasks (between the numeric core and
-- labelling). 0 for batches recorded before this migration, which did not time it.
ALTER TABLE runs ADD COLUMN match_s DOUBLE PRECISION NOT NULL DEFAULT 0;

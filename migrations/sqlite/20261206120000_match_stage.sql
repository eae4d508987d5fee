-- segclust store, SQLite dialect, fourth migration. Keep in step with migrations/postgres.

-- Seconds a batch spent matching clusters and noise to Tasks (between the numeric core and
-- labelling). 0 for batches recorded before this migration, which did not time it.
ALTER TABLE runs ADD COLUMN match_s REAL NOT NULL DEFAULT 0;

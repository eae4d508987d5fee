-- segclust store, SQLite dialect, second migration: what the report needs that the first schema
-- did not keep. Keep in step with migrations/postgres.

-- The segment's description, stored with its link so that `tasks show` and the report need no
-- access to the source. Links made before this migration have ''.
ALTER TABLE task_segment_links ADD COLUMN content TEXT NOT NULL DEFAULT '';

-- One row per committed batch, written in the batch's own transaction (exactly once with it).
CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id            INTEGER NOT NULL,
    started_at_ms      INTEGER NOT NULL,
    finished_at_ms     INTEGER NOT NULL,
    -- The batch's "now" (differs from the wall clock when a run is pinned with --now-ms).
    now_ms             INTEGER NOT NULL,
    segments_read      INTEGER NOT NULL,
    already_linked     INTEGER NOT NULL,
    carried_over       INTEGER NOT NULL,
    quarantined        INTEGER NOT NULL,
    clustered          INTEGER NOT NULL,
    clusters           INTEGER NOT NULL,
    noise              INTEGER NOT NULL,
    rescued            INTEGER NOT NULL,
    tasks_created      INTEGER NOT NULL,
    tasks_updated      INTEGER NOT NULL,
    links              INTEGER NOT NULL,
    read_s             REAL    NOT NULL,
    numeric_s          REAL    NOT NULL,
    label_s            REAL    NOT NULL,
    commit_s           REAL    NOT NULL,
    -- JSON object: quarantine reason (numbers replaced by N) -> rows.
    quarantine_reasons TEXT    NOT NULL,
    -- JSON array of [x, y, cluster, task_id|null]: a deterministic sample of the batch's rows on
    -- the first two PCA axes (cluster -1 = noise).
    map                TEXT    NOT NULL
);
CREATE INDEX runs_team ON runs (team_id, id);

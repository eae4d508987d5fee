-- segclust store, SQLite dialect. Keep in step with migrations/postgres: same tables, columns,
-- constraints and indexes; only the type names differ (INTEGER/REAL/BLOB vs BIGINT/DOUBLE/BYTEA).
-- Timestamps are BIGINT milliseconds since the Unix epoch (columns named *_ms).

CREATE TABLE tasks (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id             INTEGER NOT NULL,
    title               TEXT    NOT NULL,
    description         TEXT    NOT NULL,
    label_source        TEXT    NOT NULL CHECK (label_source IN ('llm', 'fallback')),
    priority_score      REAL    NOT NULL DEFAULT 0,
    priority_level      TEXT    NOT NULL DEFAULT 'low',
    impact              REAL    NOT NULL DEFAULT 0,
    segment_count       INTEGER NOT NULL DEFAULT 0,
    occurrence_count    INTEGER NOT NULL DEFAULT 0,
    distinct_user_count INTEGER NOT NULL DEFAULT 0,
    first_seen_ms       INTEGER NOT NULL DEFAULT 0,
    last_seen_ms        INTEGER NOT NULL DEFAULT 0,
    centroid            BLOB    NOT NULL,
    centroid_weight     INTEGER NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    -- Target of the links' composite foreign key: a link can only point at a Task of its own team.
    UNIQUE (id, team_id)
);
CREATE INDEX tasks_team ON tasks (team_id);

CREATE TABLE task_segment_links (
    task_id       INTEGER NOT NULL,
    team_id       INTEGER NOT NULL,
    document_id   TEXT    NOT NULL,
    session_id    TEXT    NOT NULL,
    distinct_id   TEXT    NOT NULL,
    distance      REAL    NOT NULL,
    impact        REAL    NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (team_id, document_id),
    FOREIGN KEY (task_id, team_id) REFERENCES tasks (id, team_id) ON DELETE CASCADE
);
-- Serves links(team, task) and the per-Task aggregate recomputation.
CREATE INDEX task_segment_links_task ON task_segment_links (team_id, task_id);

CREATE TABLE clustering_state (
    team_id                  INTEGER PRIMARY KEY,
    watermark_inserted_at_ms INTEGER NOT NULL,
    watermark_document_id    TEXT    NOT NULL,
    updated_at_ms            INTEGER NOT NULL
);

CREATE TABLE quarantined_segments (
    team_id       INTEGER NOT NULL,
    document_id   TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (team_id, document_id)
);

CREATE TABLE unlinked_segments (
    team_id        INTEGER NOT NULL,
    document_id    TEXT    NOT NULL,
    inserted_at_ms INTEGER NOT NULL,
    timestamp_ms   INTEGER NOT NULL,
    UNIQUE (team_id, document_id)
);
-- Serves carry_over (window by timestamp) and pruning.
CREATE INDEX unlinked_segments_time ON unlinked_segments (team_id, timestamp_ms);

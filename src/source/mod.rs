//! Where segments come from.
//!
//! Today the only source is a local segments file ([`FileSource`]: Parquet or JSON Lines, the
//! embedded default and the format for backfills and experiments). A ClickHouse source
//! (`document_embeddings`, production) will be added later as another [`Source`] variant behind
//! the same three methods: `read_after` (a page strictly after a watermark, in
//! `(inserted_at, document_id)` order), `read_by_ids` (re-reading carried-over unlinked
//! segments) and `teams`. The pipeline only talks to [`Source`], so adding a variant means
//! one new module and one new arm per method here, nothing in the callers.
//!
//! The methods are synchronous: a page is bounded (at most `limit` rows) and the pipeline calls
//! them on a blocking thread.

mod file;

use std::path::Path;

use anyhow::Result;

pub use file::{FileSource, write_segments};

use crate::segment::{Quarantine, RawSegment, Watermark};

/// One page read from a source.
#[derive(Debug, Default)]
pub struct SourcePage {
    /// Rows that parsed, in `(inserted_at, document_id)` order. Still untrusted: they go to
    /// `validate` next.
    pub rows: Vec<RawSegment>,
    /// Rows that could not be parsed at all, each with a reason naming the file and line or row.
    pub rejected: Vec<Quarantine>,
    /// Position of the last row this page covered, parsed or rejected, so the caller can move
    /// its watermark past rejected rows too. `None` when the page covered no positioned row
    /// (and always for `read_by_ids`, which must never move a watermark).
    pub last: Option<Watermark>,
}

/// A source of segments. See the module docs for how variants are added.
#[derive(Debug)]
pub enum Source {
    File(FileSource),
}

impl Source {
    /// Opens a segments file (`.parquet`, `.jsonl` or `.ndjson`); rows without a team_id belong
    /// to `default_team`.
    pub fn open_file(path: impl AsRef<Path>, default_team: i64) -> Result<Self> {
        Ok(Source::File(FileSource::open(path, default_team)?))
    }

    /// Up to `limit` rows of `team` strictly after `after`, in `(inserted_at, document_id)` order.
    pub fn read_after(
        &self,
        team: i64,
        after: Option<&Watermark>,
        limit: usize,
    ) -> Result<SourcePage> {
        match self {
            Source::File(f) => f.read_after(team, after, limit),
        }
    }

    /// Rows of `team` whose document_id is in `ids`, in `(inserted_at, document_id)` order.
    pub fn read_by_ids(&self, team: i64, ids: &[String]) -> Result<SourcePage> {
        match self {
            Source::File(f) => f.read_by_ids(team, ids),
        }
    }

    /// Distinct team ids present in the source, ascending.
    pub fn teams(&self) -> Result<Vec<i64>> {
        match self {
            Source::File(f) => f.teams(),
        }
    }
}

//! Nearest-centroid search for matching, screened by one GEMM per block of queries.
//!
//! Matching asks, for each cluster and each noise row in turn, which centroid (an existing
//! Task's, or a new group's) is nearest within the threshold, and every answer can move a
//! centroid. Pair by pair that is one 3072-long dot product per query and centroid, read from
//! memory each time: quadratic and memory-bound once a team has thousands of Tasks or a batch
//! thousands of clusters that merge with nothing (`cargo bench --bench numeric --
//! matching_plan`).
//!
//! So a block of queries is multiplied with the centroids as they were when the block started
//! (f32 GEMM), and also with itself, since a group that a query of the block starts has exactly
//! that query's vector until it takes in something. The f32 product rules a pair out only when
//! it is farther than the threshold by more than the product's worst-case rounding plus how far
//! the centroid has moved since the product was taken (a group that takes in row after row
//! moves a little each time; comparing it exactly once it had moved at all made a 50,000-row
//! demo batch spend 9.5 s matching). Every other pair is decided by the exact f64 distance, as
//! without the screen. So every decision, tie-breaks included, is the one the pairwise search
//! makes (`tests::screened_plan_equals_the_pairwise_one`).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use crate::matrix::{cosine_distance_unit, f32_dot_rel as rel, norm64};

/// Centroids packed row-major at one dimension. A centroid that changes after a screen was
/// taken keeps the row the screen saw and how far it has moved from it, so the screen's
/// products still bound its distances.
pub(super) struct Centroids {
    dim: usize,
    data: Vec<f32>,
    /// Euclidean norms, for the screen's margin (a stored centroid need not be unit length).
    norm: Vec<f64>,
    /// Rows as the current screen saw them, saved on their first change after it (copy on
    /// write), and the indices saved.
    saved: Vec<Option<Saved>>,
    changed: Vec<usize>,
}

struct Saved {
    row: Vec<f32>,
    norm: f64,
    /// An upper bound on |row now - saved row|.
    drift: f64,
}

impl Centroids {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            data: Vec::new(),
            norm: Vec::new(),
            saved: Vec::new(),
            changed: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.norm.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Appends `c`, returning its index. Matching passes only centroids of `dim` values; any
    /// other length is cut or padded with zeros rather than trusted.
    pub fn push(&mut self, c: &[f32]) -> usize {
        debug_assert_eq!(c.len(), self.dim);
        self.data.resize(self.data.len() + self.dim, 0.0);
        self.norm.push(0.0);
        self.saved.push(None);
        let i = self.len() - 1;
        self.write(i, c);
        i
    }

    pub fn set(&mut self, i: usize, c: &[f32]) {
        if self.saved[i].is_none() {
            self.saved[i] = Some(Saved {
                row: self.row(i).to_vec(),
                norm: self.norm[i],
                drift: 0.0,
            });
            self.changed.push(i);
        }
        self.write(i, c);
        let row = &self.data[i * self.dim..(i + 1) * self.dim];
        if let Some(s) = &mut self.saved[i] {
            // Differences of f32 values are exact in f64; the sum's rounding is far below the
            // 1e-6 relative and 1e-12 absolute room added.
            let d2: f64 = row
                .iter()
                .zip(&s.row)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            s.drift = d2.sqrt() * (1.0 + 1e-6) + 1e-12;
        }
    }

    fn write(&mut self, i: usize, c: &[f32]) {
        let row = &mut self.data[i * self.dim..(i + 1) * self.dim];
        let n = c.len().min(self.dim);
        row[..n].copy_from_slice(&c[..n]);
        row[n..].fill(0.0);
        self.norm[i] = norm64(self.row(i));
    }

    /// Makes the rows as they are now the ones a new screen sees.
    fn snapshot(&mut self) {
        for i in self.changed.drain(..) {
            self.saved[i] = None;
        }
    }

    /// The norm of the row a screen saw, and how far the row has moved since.
    fn seen(&self, i: usize) -> (f64, f64) {
        match &self.saved[i] {
            Some(s) => (s.norm, s.drift),
            None => (self.norm[i], 0.0),
        }
    }

    fn as_faer(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.data, self.len(), self.dim)
    }
}

/// A block of queries, packed, with their norms.
pub(super) struct Block {
    queries: Centroids,
    /// `queries * queries^T`, made when a query of the block first starts a group: in a batch
    /// whose noise rows mostly join Tasks, most blocks never need it.
    own: std::cell::OnceCell<Mat<f32>>,
}

impl Block {
    pub fn new<'a>(dim: usize, queries: impl Iterator<Item = &'a [f32]>) -> Self {
        let mut q = Centroids::new(dim);
        for v in queries {
            q.push(v);
        }
        Self {
            queries: q,
            own: std::cell::OnceCell::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.queries.len()
    }

    pub fn query(&self, j: usize) -> &[f32] {
        self.queries.row(j)
    }
}

/// The products of one block's queries with one set of centroids as it was at the block's
/// start, and with the centroids the block's own queries started since.
pub(super) struct Screen {
    dots: Mat<f32>,
    /// For each centroid: where its products are (a column of `dots`, or of the block's `own`
    /// products); `None` where there are none.
    cols: Vec<Option<Col>>,
    /// Relative rounding bound of an f32 product of this length (see `nearest_within`).
    rel: f64,
}

#[derive(Clone, Copy)]
enum Col {
    Snapshot(usize),
    Own(usize),
}

impl Screen {
    /// Multiplies the block with `set` as it is now (which `set` then measures changes from).
    pub fn new(block: &Block, set: &mut Centroids) -> Self {
        set.snapshot();
        let dots = if set.len() == 0 || block.len() == 0 {
            Mat::zeros(block.len(), 0)
        } else {
            product(block.queries.as_faer(), set.as_faer())
        };
        let cols = (0..set.len()).map(|t| Some(Col::Snapshot(t))).collect();
        Self {
            dots,
            cols,
            rel: rel(set.dim),
        }
    }

    /// No products: every comparison is exact. For a set the block does not search.
    pub fn exact() -> Self {
        Self {
            dots: Mat::zeros(0, 0),
            cols: Vec::new(),
            rel: 0.0,
        }
    }

    /// Records that centroid `t` of the screened set was just started from the block's query
    /// `j`, whose products with the block's queries are then its screen.
    pub fn started(&mut self, block: &Block, t: usize, j: usize) {
        block
            .own
            .get_or_init(|| product(block.queries.as_faer(), block.queries.as_faer()));
        if self.cols.len() <= t {
            self.cols.resize(t + 1, None);
        }
        self.cols[t] = Some(Col::Own(j));
    }

    /// The nearest centroid of `set` strictly within `threshold` of the block's query `j`, ties
    /// to the lower index: the same answer as comparing `c` with every centroid exactly.
    ///
    /// The margin: an f32 dot product of length D is off from the exact one by at most
    /// `D u sum |a_i b_i| <= D u |a| |b|` (u = 2^-24, any summation order, FMA or not), and the
    /// f64 one `cosine_distance_unit` computes differs from the exact one by far less than the
    /// slack `rel` adds beyond that. A centroid that moved by `drift` since the product was
    /// taken changes its product with `q` by at most `|q| drift` (Cauchy-Schwarz), so a centroid
    /// that keeps absorbing rows stays screened. A NaN product is never ruled out.
    pub fn nearest_within(
        &self,
        block: &Block,
        j: usize,
        c: &[f32],
        set: &Centroids,
        threshold: f64,
    ) -> Option<(usize, f64)> {
        let qn = block.queries.norm[j];
        let mut best: Option<(usize, f64)> = None;
        for t in 0..set.len() {
            let screened = match self.cols.get(t).copied().flatten() {
                Some(Col::Snapshot(s)) => Some(self.dots[(j, s)]),
                Some(Col::Own(o)) => block.own.get().map(|own| own[(j, o)]),
                None => None,
            };
            if let Some(dot) = screened {
                let approx = 1.0 - f64::from(dot);
                let (seen_norm, drift) = set.seen(t);
                let slack = qn * (self.rel * seen_norm + drift);
                if approx - slack >= threshold {
                    continue;
                }
            }
            let d = cosine_distance_unit(c, set.row(t));
            if d < threshold && best.is_none_or(|(_, bd)| d < bd) {
                best = Some((t, d));
            }
        }
        best
    }
}

fn product(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Mat<f32> {
    let mut out = Mat::<f32>::zeros(a.nrows(), b.nrows());
    // Threads only change which candidates the screen passes on, never a decision.
    matmul(
        out.as_mut(),
        Accum::Replace,
        a,
        b.transpose(),
        1.0f32,
        Par::rayon(0),
    );
    out
}

/// Queries per block: large enough for the GEMM to pay, small enough that the products of a
/// block with tens of thousands of Tasks stay within tens of MB.
pub(super) fn block_rows(centroids: usize) -> usize {
    (4_000_000 / centroids.max(1)).clamp(32, 256)
}

/// Pairs of `set`'s centroids strictly within `threshold` of each other, with their exact
/// distances, `a < b`, in no particular order: one product of the set with itself, in row
/// blocks across threads, exact distances for the candidates it passes.
pub(super) fn close_pairs(set: &Centroids, threshold: f64) -> Vec<(usize, usize, f64)> {
    use rayon::prelude::*;
    let k = set.len();
    let rel = rel(set.dim);
    let step = block_rows(k);
    (0..k.div_ceil(step))
        .into_par_iter()
        .flat_map_iter(|blk| {
            let (lo, hi) = (blk * step, ((blk + 1) * step).min(k));
            let rows = MatRef::from_row_major_slice(
                &set.data[lo * set.dim..hi * set.dim],
                hi - lo,
                set.dim,
            );
            // Only the pairs with b > a: the columns from the block's first row on.
            let mut dots = Mat::<f32>::zeros(hi - lo, k - lo);
            matmul(
                dots.as_mut(),
                Accum::Replace,
                rows,
                set.as_faer().subrows(lo, k - lo).transpose(),
                1.0f32,
                Par::Seq,
            );
            let mut out = Vec::new();
            for a in lo..hi {
                for b in a + 1..k {
                    let approx = 1.0 - f64::from(dots[(a - lo, b - lo)]);
                    if approx - rel * set.norm[a] * set.norm[b] >= threshold {
                        continue;
                    }
                    let d = cosine_distance_unit(set.row(a), set.row(b));
                    if d < threshold {
                        out.push((a, b, d));
                    }
                }
            }
            out.into_iter()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(deg: f64) -> Vec<f32> {
        let r = deg.to_radians();
        vec![r.cos() as f32, r.sin() as f32]
    }

    /// A centroid 0.35 from the query when the screen was taken moves to 0.29 (a chord of
    /// 0.082, of which 0.06 towards the query): the screen must still pass it on. Bounding the
    /// move by half its length would rule it out.
    #[test]
    fn a_centroid_that_moved_into_reach_is_found() {
        let q = at(0.0);
        let block = Block::new(2, std::iter::once(q.as_slice()));
        let mut set = Centroids::new(2);
        set.push(&at(0.65f64.acos().to_degrees()));
        let screen = Screen::new(&block, &mut set);
        assert_eq!(screen.nearest_within(&block, 0, &q, &set, 0.3), None);
        set.set(0, &at(0.71f64.acos().to_degrees()));
        let (t, d) = screen
            .nearest_within(&block, 0, &q, &set, 0.3)
            .expect("the moved centroid is within 0.3");
        assert_eq!(t, 0);
        assert!((d - 0.29).abs() < 1e-6, "{d}");
        // A new screen measures from the row as it is now.
        set.set(0, &at(80.0));
        let again = Screen::new(&block, &mut set);
        assert_eq!(set.seen(0), (set.norm[0], 0.0));
        assert_eq!(again.nearest_within(&block, 0, &q, &set, 0.3), None);
    }
}

//! Dense O(N^2) Prim over the complete mutual-reachability graph.
//!
//! This is the oracle: it is a line-by-line port of scikit-learn's `mst_from_data_matrix`
//! (`sklearn/cluster/_hdbscan/_linkage.pyx`), visiting candidates in the same order and breaking
//! ties with the same strict comparisons, so that where exactly equal distances make the MST
//! ambiguous it still picks the edges scikit-learn picks. Distances are computed the way
//! scikit-learn's `EuclideanDistance64` does (f64 sum of squared differences, in column order,
//! then `sqrt`) rather than by the dot-product expansion, so they agree bit for bit.
//! It is also the small-input path, where a spatial index would not pay for itself.

use super::MstEdge;
use crate::matrix::Matrix;
use rayon::prelude::*;

/// Euclidean distance in f64, summed in column order like scikit-learn's `EuclideanDistance64`.
#[inline]
pub fn euclidean(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = f64::from(x) - f64::from(y);
        acc += d * d;
    }
    acc.sqrt()
}

/// `euclidean` of four pairs, bit for bit: four sums in column order side by side, so that the
/// CPU overlaps their chains of dependent additions (one sum alone waits on every add).
#[inline]
pub fn euclidean4(a: [&[f32]; 4], b: [&[f32]; 4]) -> [f64; 4] {
    let d = a.iter().chain(&b).map(|r| r.len()).min().unwrap_or(0);
    let (a0, a1, a2, a3) = (&a[0][..d], &a[1][..d], &a[2][..d], &a[3][..d]);
    let (b0, b1, b2, b3) = (&b[0][..d], &b[1][..d], &b[2][..d], &b[3][..d]);
    let mut s = [0f64; 4];
    for j in 0..d {
        let t = [
            f64::from(a0[j]) - f64::from(b0[j]),
            f64::from(a1[j]) - f64::from(b1[j]),
            f64::from(a2[j]) - f64::from(b2[j]),
            f64::from(a3[j]) - f64::from(b3[j]),
        ];
        for i in 0..4 {
            s[i] += t[i] * t[i];
        }
    }
    s.map(f64::sqrt)
}

/// Core distance of every point: the distance to its `min_samples`-th nearest neighbour, the
/// point itself counted as the first (scikit-learn's convention, so `min_samples == 1` gives 0).
///
/// Brute force, O(N^2): only the value of the k-th smallest distance matters, so ties between
/// neighbours cannot change it. `min_samples` above N is clamped to N (scikit-learn rejects it;
/// `HdbscanParams::validate` is where that belongs).
pub fn core_distances(x: &Matrix, min_samples: usize) -> Vec<f64> {
    let n = x.rows();
    if n == 0 {
        return Vec::new();
    }
    let k = min_samples.clamp(1, n);
    if k == 1 {
        return vec![0.0; n];
    }
    (0..n)
        .into_par_iter()
        .map_init(
            || Vec::with_capacity(n),
            |dists: &mut Vec<f64>, i| {
                let xi = x.row(i);
                dists.clear();
                dists.extend((0..n).map(|j| if i == j { 0.0 } else { euclidean(xi, x.row(j)) }));
                let (_, kth, _) = dists.select_nth_unstable_by(k - 1, f64::total_cmp);
                *kth
            },
        )
        .collect()
}

/// The exact mutual-reachability MST, `n - 1` edges in the order Prim adds them (`a` is the
/// tree-side endpoint, `b` the newly added point), like scikit-learn's `mst_from_data_matrix`.
pub fn mst(x: &Matrix, min_samples: usize) -> Vec<MstEdge> {
    let core = core_distances(x, min_samples);
    mst_with_core(x, &core)
}

/// Prim given precomputed core distances (the fast path reuses its own kNN core distances
/// and can check itself against this).
pub fn mst_with_core(x: &Matrix, core: &[f64]) -> Vec<MstEdge> {
    let n = x.rows();
    assert_eq!(core.len(), n, "one core distance per row");
    if n < 2 {
        return Vec::new();
    }
    let mut in_tree = vec![false; n];
    let mut min_reachability = vec![f64::INFINITY; n];
    // scikit-learn initialises the sources to 1; they are only read once a finite
    // reachability was recorded, so the initial value never reaches the output.
    let mut current_sources = vec![1usize; n];
    let mut edges = Vec::with_capacity(n - 1);
    let mut current_node = 0usize;

    for _ in 0..n - 1 {
        in_tree[current_node] = true;
        let current_core = core[current_node];
        let current_row = x.row(current_node);
        let mut new_reachability = f64::MAX;
        let mut source_node = 0usize;
        let mut new_node = 0usize;

        for j in 0..n {
            if in_tree[j] {
                continue;
            }
            let next_min_reach = min_reachability[j];
            let next_source = current_sources[j];
            let pair = euclidean(current_row, x.row(j));
            let mrd = current_core.max(core[j]).max(pair);
            if mrd < next_min_reach {
                min_reachability[j] = mrd;
                current_sources[j] = current_node;
                if mrd < new_reachability {
                    new_reachability = mrd;
                    source_node = current_node;
                    new_node = j;
                }
            } else if next_min_reach < new_reachability {
                new_reachability = next_min_reach;
                source_node = next_source;
                new_node = j;
            }
        }

        edges.push(MstEdge {
            a: u32::try_from(source_node).expect("row index fits in u32"),
            b: u32::try_from(new_node).expect("row index fits in u32"),
            weight: new_reachability,
        });
        current_node = new_node;
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(points: &[f32]) -> Matrix {
        Matrix::new(points.len(), 1, points.to_vec()).unwrap()
    }

    #[test]
    fn core_distance_counts_the_point_itself() {
        let x = line(&[0.0, 1.0, 3.0, 7.0]);
        assert_eq!(core_distances(&x, 1), vec![0.0; 4]);
        assert_eq!(core_distances(&x, 2), vec![1.0, 1.0, 2.0, 4.0]);
        assert_eq!(core_distances(&x, 3), vec![3.0, 2.0, 3.0, 6.0]);
        // Clamped to N: the farthest point.
        assert_eq!(core_distances(&x, 9), vec![7.0, 6.0, 4.0, 7.0]);
    }

    #[test]
    fn euclidean_matches_the_textbook_formula() {
        assert_eq!(euclidean(&[0.0, 0.0], &[3.0, 4.0]), 5.0);
        assert_eq!(euclidean(&[1.5], &[1.5]), 0.0);
    }

    #[test]
    fn mst_on_a_line_links_neighbours() {
        let x = line(&[0.0, 1.0, 3.0, 7.0]);
        let e = mst(&x, 1);
        let got: Vec<(u32, u32, f64)> = e.iter().map(|e| (e.a, e.b, e.weight)).collect();
        assert_eq!(got, vec![(0, 1, 1.0), (1, 2, 2.0), (2, 3, 4.0)]);
    }

    #[test]
    fn mst_uses_mutual_reachability() {
        // min_samples 3: core = [3, 2, 3, 6]; every weight is at least both cores.
        let x = line(&[0.0, 1.0, 3.0, 7.0]);
        let e = mst(&x, 3);
        let total: f64 = e.iter().map(|e| e.weight).sum();
        assert_eq!(total, 3.0 + 3.0 + 6.0);
        for e in &e {
            assert!(e.weight >= 3.0);
        }
    }

    #[test]
    fn mst_has_minimum_weight_against_brute_force() {
        // 6 points in 2-D: compare the total weight with an exhaustive Kruskal on all pairs.
        let pts = [
            0.0f32, 0.0, 1.0, 0.2, 5.0, 5.0, 5.5, 4.0, 9.0, 0.5, 2.0, 7.0,
        ];
        let x = Matrix::new(6, 2, pts.to_vec()).unwrap();
        for ms in 1..=4 {
            let core = core_distances(&x, ms);
            let mut pairs = Vec::new();
            for i in 0..6 {
                for j in i + 1..6 {
                    let d = euclidean(x.row(i), x.row(j)).max(core[i]).max(core[j]);
                    pairs.push((d, i, j));
                }
            }
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut comp: Vec<usize> = (0..6).collect();
            let mut kruskal = 0.0;
            for (d, i, j) in pairs {
                let (ci, cj) = (comp[i], comp[j]);
                if ci != cj {
                    kruskal += d;
                    comp.iter_mut().filter(|c| **c == cj).for_each(|c| *c = ci);
                }
            }
            let prim: f64 = mst(&x, ms).iter().map(|e| e.weight).sum();
            assert!(
                (prim - kruskal).abs() < 1e-12,
                "min_samples {ms}: {prim} vs {kruskal}"
            );
        }
    }

    #[test]
    fn tiny_inputs() {
        assert!(mst(&Matrix::zeros(0, 3), 2).is_empty());
        assert!(mst(&Matrix::zeros(1, 3), 2).is_empty());
        let e = mst(&Matrix::zeros(3, 2), 2);
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.weight == 0.0));
    }
}

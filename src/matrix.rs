//! A dense row-major f32 matrix: the one in-memory layout for embeddings and reduced data.
//!
//! Row-major because segments arrive one row at a time from files and ClickHouse, and because
//! kNN and distance kernels walk rows. Numeric code borrows it as a faer view (`as_faer`) without
//! copying, so no f64 copy of an input matrix is ever made.

use anyhow::{Result, bail};

#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// Wraps `data` (row-major, `rows * cols` values).
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        match rows.checked_mul(cols) {
            Some(len) if len == data.len() => Ok(Self { rows, cols, data }),
            _ => bail!(
                "matrix of {rows} x {cols} needs {} values, got {}",
                rows.saturating_mul(cols),
                data.len()
            ),
        }
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// A zero-copy faer view (row-major: row stride `cols`, column stride 1).
    pub fn as_faer(&self) -> faer::MatRef<'_, f32> {
        faer::MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// Rows picked by index, in the given order.
    pub fn select_rows(&self, idx: &[usize]) -> Matrix {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Matrix {
            rows: idx.len(),
            cols: self.cols,
            data,
        }
    }

    /// Scales every row to unit L2 norm (cosine geometry). Zero rows stay zero; validation
    /// quarantines them before this is reached.
    pub fn normalize_rows(&mut self) {
        for i in 0..self.rows {
            normalize(self.row_mut(i));
        }
    }
}

/// Scales `v` to unit L2 norm in place (accumulating in f64); a zero vector is left as is.
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Cosine distance between two unit vectors (1 - dot), computed in f64.
pub fn cosine_distance_unit(a: &[f32], b: &[f32]) -> f64 {
    1.0 - dot64(a, b)
}

/// `|v|` in f64.
pub fn norm64(v: &[f32]) -> f64 {
    dot64(v, v).sqrt()
}

/// A relative bound on how far an f32 dot product of length `dim` can be from the exact one,
/// with room to spare: recursive or blocked summation of n terms is off by at most
/// `n u sum |a_i b_i|` (u = 2^-24, FMA or not); f32::EPSILON is 2u, so this is twice that for
/// n = dim + 8, plus room for the f64 round-off of the exact values a screen is compared with.
/// The GEMM screens (kNN, matching) rule a pair out only beyond it.
pub fn f32_dot_rel(dim: usize) -> f64 {
    (dim as f64 + 8.0) * f64::from(f32::EPSILON) + 1e-9
}

/// `<a, b>` in f64 over the common prefix.
///
/// Eight running sums, added in a fixed order at the end: one sum was a chain of dependent
/// additions, bound by their latency, and matching calls this for every pair of a cluster and a
/// group (`cargo bench --bench numeric -- matching_plan`). The order is fixed, so the result
/// depends on the inputs only.
pub fn dot64(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
        }
    }
    let mut dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        dot += f64::from(x) * f64::from(y);
    }
    dot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_shape() {
        assert!(Matrix::new(2, 3, vec![0.0; 5]).is_err());
        let m = Matrix::new(2, 3, (0..6).map(|x| x as f32).collect()).unwrap();
        assert_eq!(m.row(1), &[3.0, 4.0, 5.0]);
        assert_eq!(m.as_faer()[(1, 2)], 5.0);
        assert_eq!(m.select_rows(&[1, 0]).row(0), &[3.0, 4.0, 5.0]);
    }

    /// The eight sums give the plain dot product to rounding, at lengths with and without a
    /// remainder, and pairs of unequal length use the common prefix, as a zip did.
    #[test]
    fn cosine_distance_is_one_minus_the_dot_product() {
        for n in [0usize, 1, 7, 8, 9, 384, 3079] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 700.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 650.0)
                .collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            let d = cosine_distance_unit(&a, &b);
            assert!(
                (d - (1.0 - plain)).abs() < 1e-12,
                "n = {n}: {d} vs {}",
                1.0 - plain
            );
            let longer: Vec<f32> = b.iter().copied().chain([9.0, 9.0]).collect();
            assert_eq!(cosine_distance_unit(&a, &longer), d);
        }
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows() {
        let mut m = Matrix::new(2, 2, vec![3.0, 4.0, 0.0, 0.0]).unwrap();
        m.normalize_rows();
        assert!((m.row(0)[0] - 0.6).abs() < 1e-6 && (m.row(0)[1] - 0.8).abs() < 1e-6);
        assert_eq!(m.row(1), &[0.0, 0.0]);
        assert!(cosine_distance_unit(m.row(0), m.row(0)).abs() < 1e-6);
    }
}

//! A start-up check of the tensor cores' screen against the FP32 one, on the device at hand.
//!
//! The TF32 screen (`Screen::Tf32`) decides which rows the leaf search measures exactly; a
//! screen that ruled out a row it should not have would not fail, it would give a wrong tree.
//! Its bound is proven and its fragment layout tested on an emulator, but the tensor cores'
//! arithmetic can only be observed on the device. So `Gpu::open` runs one small problem, made
//! to be delicate for the screen, through both screens, and keeps the tensor cores only if the
//! two trees are the same edge for edge (a few milliseconds of kernels).

use super::Screen;
use crate::cluster::MstEdge;
use crate::matrix::Matrix;
use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The check's rows: 48 groups of 16 near-duplicates (keys about 1e-6 apart) around centres
/// spread over [-40, 40]^24, and 384 rows spread over the same cube. Deterministic.
pub fn rows() -> Matrix {
    const D: usize = 24;
    let mut rng = StdRng::seed_from_u64(0x7f32_ca4a);
    let mut data = Vec::with_capacity((48 * 16 + 384) * D);
    for _ in 0..48 {
        let centre: Vec<f32> = (0..D).map(|_| rng.random_range(-40.0f32..40.0)).collect();
        for _ in 0..16 {
            data.extend(centre.iter().map(|&v| v + rng.random_range(-1e-3f32..1e-3)));
        }
    }
    for _ in 0..384 {
        data.extend((0..D).map(|_| rng.random_range(-40.0f32..40.0)));
    }
    Matrix::new(data.len() / D, D, data).expect("the canary's shape is consistent")
}

/// Whether the tree `mst` gives with the TF32 screen is the FP32 screen's, edge for edge
/// (weights by their bits). `mst` runs the GPU MST of `rows()` with the screen it is given.
pub fn screens_agree(mut mst: impl FnMut(Screen) -> Result<Vec<MstEdge>>) -> Result<bool> {
    let tensor_cores = mst(Screen::Tf32)?;
    let fp32 = mst(Screen::F32)?;
    Ok(edges(&tensor_cores) == edges(&fp32))
}

fn edges(mst: &[MstEdge]) -> Vec<(u32, u32, u64)> {
    let mut e: Vec<_> = mst
        .iter()
        .map(|e| (e.a.min(e.b), e.a.max(e.b), e.weight.to_bits()))
        .collect();
    e.sort_unstable();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_are_fixed() {
        let (a, b) = (rows(), rows());
        assert_eq!((a.rows(), a.cols()), (1152, 24));
        assert!(a.as_slice() == b.as_slice());
    }

    #[test]
    fn a_different_tree_is_a_disagreement() {
        let tree = |w: f64| {
            vec![MstEdge {
                a: 1,
                b: 0,
                weight: w,
            }]
        };
        assert!(screens_agree(|_| Ok(tree(1.0))).unwrap());
        assert!(!screens_agree(|s| Ok(tree(if s == Screen::Tf32 { 1.0 } else { 1.5 }))).unwrap());
        assert!(screens_agree(|_| anyhow::bail!("no device")).is_err());
    }
}

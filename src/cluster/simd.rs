//! The CPU's distance kernels: the portable versions, and the same sums with x86 (AVX2+FMA,
//! AVX-512) and aarch64 (NEON) intrinsics. `knn::Kernels` picks one set for the running CPU.
//!
//! Why this module stands alone (std only, nothing from the crate): `tools/simd-check` compiles
//! this very file for aarch64 and runs it under qemu in CI, comparing every intrinsic kernel
//! with the portable one bit for bit, without cross-building the whole engine.
//!
//! Why the intrinsic kernels equal the portable ones with `FMA = true` to the bit: each lane
//! accumulates its products in the same order with one fused multiply-add per dimension, and
//! the final `(|r|^2 + |q|^2) - 2 acc` rounds once either way (doubling is exact). So one
//! rigorous error bound (`Kernels::norm_shrink`) covers them all.

/// Queries measured together against a panel: six by two AVX vectors of eight rows keep twelve
/// accumulators in flight, enough to hide the FMA latency on both pipes, with registers left
/// for the two row vectors and a broadcast (AVX-512: six by two panels of sixteen; NEON: six by
/// four vectors of four, 24 of its 32 registers).
pub const GROUP: usize = 6;
/// Rows per panel (two AVX vectors, one AVX-512 vector, four NEON vectors).
pub const LANES: usize = 16;

/// Squared distances from a query to four rows: (query, rows).
pub type Sq4 = fn(&[f32], [&[f32]; 4]) -> [f32; 4];
/// An f64 distance between two rows, for bounds.
pub type Exact = fn(&[f32], &[f32]) -> f64;
/// `<row - c, u>` for four rows: (c, u, rows).
pub type Proj4 = fn(&[f32], &[f32], [&[f32]; 4]) -> [f32; 4];
/// Up to `GROUP` queries against consecutive panels of `LANES` rows, screened (see
/// `Kernels::panel`): (queries, their scaled norms, their thresholds, the panels, the panels'
/// scaled norms). The number of panels is `norms.len() / LANES`.
pub type PanelFn = fn(&[&[f32]], &[f32], &[f32], &[f32], &[f32]) -> [u32; GROUP];

/// Every panel kernel this CPU can run, slowest first, as (name, kernel, panels per call):
/// `knn::Kernels` takes the fastest within `SEGCLUST_SIMD`'s cap; the tests and
/// `tools/simd-check` check them all.
// Pushes under `cfg`: on aarch64 the first push follows the creation.
#[allow(clippy::vec_init_then_push)]
pub fn panel_variants() -> Vec<(&'static str, PanelFn, usize)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, PanelFn, usize)> = vec![("portable", panel_generic::<false>, 1)];
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    v.push(("neon", neon::panel_neon as PanelFn, 1));
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            v.push(("avx2", x86::panel_avx2, 1));
        }
        if has!("avx512f") {
            v.push(("avx512", x86::panel_avx512, 2));
        }
    }
    v
}

#[inline(always)]
pub fn sq4_generic<const FMA: bool>(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
    let d = q.len();
    let (r0, r1, r2, r3) = (&r[0][..d], &r[1][..d], &r[2][..d], &r[3][..d]);
    let mut acc = [[0f32; 8]; 4];
    let chunks = q
        .chunks_exact(8)
        .zip(r0.chunks_exact(8))
        .zip(r1.chunks_exact(8))
        .zip(r2.chunks_exact(8))
        .zip(r3.chunks_exact(8));
    for ((((a, b0), b1), b2), b3) in chunks {
        for j in 0..8 {
            let x = a[j];
            let t0 = x - b0[j];
            let t1 = x - b1[j];
            let t2 = x - b2[j];
            let t3 = x - b3[j];
            if FMA {
                acc[0][j] = t0.mul_add(t0, acc[0][j]);
                acc[1][j] = t1.mul_add(t1, acc[1][j]);
                acc[2][j] = t2.mul_add(t2, acc[2][j]);
                acc[3][j] = t3.mul_add(t3, acc[3][j]);
            } else {
                acc[0][j] += t0 * t0;
                acc[1][j] += t1 * t1;
                acc[2][j] += t2 * t2;
                acc[3][j] += t3 * t3;
            }
        }
    }
    let tail = d - d % 8;
    let mut out = [0f32; 4];
    for (i, rr) in [r0, r1, r2, r3].into_iter().enumerate() {
        let a = &acc[i];
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for j in tail..d {
            let t = q[j] - rr[j];
            s += t * t;
        }
        out[i] = s;
    }
    out
}

/// The portable `Kernels::panel`: the same sums, lane by lane.
#[inline(always)]
pub fn panel_generic<const FMA: bool>(
    qs: &[&[f32]],
    qn: &[f32],
    th: &[f32],
    panels: &[f32],
    pn: &[f32],
) -> [u32; GROUP] {
    let mut out = [0u32; GROUP];
    let np = pn.len() / LANES;
    // A u32 mask holds two panels; `scan` never asks for more.
    debug_assert!(np <= 2, "{np} panels in one call");
    let Some(per) = panels.len().checked_div(np) else {
        return out;
    };
    let pairs = panels.chunks_exact(per).zip(pn.chunks_exact(LANES));
    for (j, (panel, pn)) in pairs.take(2).enumerate() {
        let (rows, _) = panel.as_chunks::<LANES>();
        for (((o, q), &n), &t) in out.iter_mut().zip(qs).zip(qn).zip(th) {
            let mut acc = [0f32; LANES];
            for (&b, row) in q.iter().zip(rows) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a = if FMA { b.mul_add(v, *a) } else { *a + b * v };
                }
            }
            for (l, (&a, &m)) in acc.iter().zip(pn).enumerate() {
                let s = (m + n) - 2.0 * a;
                // "Not greater than", NaN included, as the intrinsics' `_CMP_NGT_UQ`.
                let pass = s.partial_cmp(&t) != Some(std::cmp::Ordering::Greater);
                *o |= u32::from(pass) << (j * LANES + l);
            }
        }
    }
    out
}

#[inline(always)]
pub fn exact_generic(a: &[f32], b: &[f32]) -> f64 {
    let b = &b[..a.len()];
    let mut acc = [0f64; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x: &[f32; 8] = x.try_into().expect("chunks of 8");
        let y: &[f32; 8] = y.try_into().expect("chunks of 8");
        for j in 0..8 {
            let t = f64::from(x[j]) - f64::from(y[j]);
            acc[j] += t * t;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    let tail = a.len() - a.len() % 8;
    for j in tail..a.len() {
        let t = f64::from(a[j]) - f64::from(b[j]);
        s += t * t;
    }
    s.sqrt()
}

/// f32 projections `<row - c, u>` of four rows (error below `rel * |row - c| * |u|`).
#[inline(always)]
pub fn proj4_generic<const FMA: bool>(c: &[f32], u: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
    let d = c.len();
    let u = &u[..d];
    let (r0, r1, r2, r3) = (&r[0][..d], &r[1][..d], &r[2][..d], &r[3][..d]);
    let mut acc = [[0f32; 8]; 4];
    let chunks = c
        .chunks_exact(8)
        .zip(u.chunks_exact(8))
        .zip(r0.chunks_exact(8))
        .zip(r1.chunks_exact(8))
        .zip(r2.chunks_exact(8))
        .zip(r3.chunks_exact(8));
    for (((((cc, uu), b0), b1), b2), b3) in chunks {
        for j in 0..8 {
            let (x, w) = (cc[j], uu[j]);
            let t = [b0[j] - x, b1[j] - x, b2[j] - x, b3[j] - x];
            for i in 0..4 {
                if FMA {
                    acc[i][j] = t[i].mul_add(w, acc[i][j]);
                } else {
                    acc[i][j] += t[i] * w;
                }
            }
        }
    }
    let tail = d - d % 8;
    let mut out = [0f32; 4];
    for (i, rr) in [r0, r1, r2, r3].into_iter().enumerate() {
        let a = &acc[i];
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for j in tail..d {
            s += (rr[j] - c[j]) * u[j];
        }
        out[i] = s;
    }
    out
}

/// The dimension of the `p` panels in `panels` when the arguments fit a kernel for `m`
/// queries, so that its unchecked loads stay in bounds; None sends the call to the portable
/// kernel.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn panel_dims(
    qs: &[&[f32]],
    qn: &[f32],
    th: &[f32],
    panels: &[f32],
    pn: &[f32],
    m: usize,
    p: usize,
) -> Option<usize> {
    let d = panels.len() / (p * LANES);
    let fits = pn.len() == p * LANES
        && panels.len() == d * p * LANES
        && qs.len() >= m
        && qn.len() >= m
        && th.len() >= m
        && qs.iter().take(m).all(|q| q.len() >= d);
    fits.then_some(d)
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    //! The same kernels compiled for AVX2+FMA; `Kernels::new` hands them out only after
    //! `is_x86_feature_detected!` confirmed both features.

    #[target_feature(enable = "avx2,fma")]
    fn sq4_impl(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        super::sq4_generic::<true>(q, r)
    }

    /// `Kernels::panel` with AVX2 intrinsics, for `M` queries and one panel (the accumulators
    /// must stay in registers, so the count is a constant).
    #[target_feature(enable = "avx2,fma")]
    fn panel_impl<const M: usize>(
        qs: &[&[f32]],
        qn: &[f32],
        th: &[f32],
        panel: &[f32],
        pn: &[f32],
    ) -> [u32; super::GROUP] {
        use super::LANES;
        use std::arch::x86_64::*;
        let Some(d) = super::panel_dims(qs, qn, th, panel, pn, M, 1) else {
            return super::panel_generic::<true>(qs, qn, th, panel, pn);
        };
        let q: [*const f32; M] = std::array::from_fn(|i| qs[i].as_ptr());
        let p = panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for t in 0..d {
            // SAFETY: the panel holds d * LANES values and every query at least d, checked above.
            let (r0, r1) = unsafe {
                (
                    _mm256_loadu_ps(p.add(t * LANES)),
                    _mm256_loadu_ps(p.add(t * LANES + 8)),
                )
            };
            for i in 0..M {
                // SAFETY: as above.
                let b = unsafe { _mm256_broadcast_ss(&*q[i].add(t)) };
                acc[i][0] = _mm256_fmadd_ps(b, r0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(b, r1, acc[i][1]);
            }
        }
        // SAFETY: `pn` holds LANES values, checked above.
        let (n0, n1) = unsafe {
            (
                _mm256_loadu_ps(pn.as_ptr()),
                _mm256_loadu_ps(pn.as_ptr().add(8)),
            )
        };
        let two = _mm256_set1_ps(2.0);
        let mut out = [0u32; super::GROUP];
        for i in 0..M {
            let (n, t) = (_mm256_set1_ps(qn[i]), _mm256_set1_ps(th[i]));
            let s0 = _mm256_fnmadd_ps(two, acc[i][0], _mm256_add_ps(n0, n));
            let s1 = _mm256_fnmadd_ps(two, acc[i][1], _mm256_add_ps(n1, n));
            // "Not greater than", unordered included: a NaN (overflowed norms) passes.
            let m0 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NGT_UQ>(s0, t)) as u32;
            let m1 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NGT_UQ>(s1, t)) as u32;
            out[i] = m0 | (m1 << 8);
        }
        out
    }

    pub fn panel_avx2(
        qs: &[&[f32]],
        qn: &[f32],
        th: &[f32],
        panel: &[f32],
        pn: &[f32],
    ) -> [u32; super::GROUP] {
        // SAFETY: only reachable through `panel_variants`, after AVX2 and FMA were
        // detected.
        unsafe {
            match qs.len() {
                0 => [0; super::GROUP],
                1 => panel_impl::<1>(qs, qn, th, panel, pn),
                2 => panel_impl::<2>(qs, qn, th, panel, pn),
                3 => panel_impl::<3>(qs, qn, th, panel, pn),
                4 => panel_impl::<4>(qs, qn, th, panel, pn),
                5 => panel_impl::<5>(qs, qn, th, panel, pn),
                _ => panel_impl::<6>(qs, qn, th, panel, pn),
            }
        }
    }

    /// `Kernels::panel` with AVX-512 intrinsics, for `M` queries and `P` panels: one 16-lane
    /// vector per panel and dimension, so two panels give six queries the twelve accumulators
    /// that hide the FMA latency (CPUs with 512-bit FMA pipes do twice AVX2's work per cycle).
    #[target_feature(enable = "avx512f")]
    fn panel512_impl<const M: usize, const P: usize>(
        qs: &[&[f32]],
        qn: &[f32],
        th: &[f32],
        panels: &[f32],
        pn: &[f32],
    ) -> [u32; super::GROUP] {
        use super::LANES;
        use std::arch::x86_64::*;
        let Some(d) = super::panel_dims(qs, qn, th, panels, pn, M, P) else {
            return super::panel_generic::<true>(qs, qn, th, panels, pn);
        };
        let q: [*const f32; M] = std::array::from_fn(|i| qs[i].as_ptr());
        let p = panels.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); P]; M];
        for t in 0..d {
            // SAFETY: panel j holds d * LANES values from j * d * LANES, and every query at
            // least d, checked above.
            let r: [__m512; P] =
                std::array::from_fn(|j| unsafe { _mm512_loadu_ps(p.add((j * d + t) * LANES)) });
            for i in 0..M {
                // SAFETY: as above.
                let b = _mm512_set1_ps(unsafe { *q[i].add(t) });
                for j in 0..P {
                    acc[i][j] = _mm512_fmadd_ps(b, r[j], acc[i][j]);
                }
            }
        }
        let two = _mm512_set1_ps(2.0);
        // SAFETY: `pn` holds P * LANES values, checked above.
        let nr: [__m512; P] =
            std::array::from_fn(|j| unsafe { _mm512_loadu_ps(pn.as_ptr().add(j * LANES)) });
        let mut out = [0u32; super::GROUP];
        for (i, (o, row)) in out.iter_mut().zip(&acc).enumerate() {
            let (n, t) = (_mm512_set1_ps(qn[i]), _mm512_set1_ps(th[i]));
            for (j, (&a, &r)) in row.iter().zip(&nr).enumerate() {
                let s = _mm512_fnmadd_ps(two, a, _mm512_add_ps(r, n));
                // "Not greater than", unordered included: a NaN (overflowed norms) passes.
                let m = _mm512_cmp_ps_mask::<_CMP_NGT_UQ>(s, t);
                *o |= u32::from(m) << (j * LANES);
            }
        }
        out
    }

    pub fn panel_avx512(
        qs: &[&[f32]],
        qn: &[f32],
        th: &[f32],
        panels: &[f32],
        pn: &[f32],
    ) -> [u32; super::GROUP] {
        macro_rules! by_queries {
            ($p:literal) => {
                match qs.len() {
                    0 => [0; super::GROUP],
                    1 => panel512_impl::<1, $p>(qs, qn, th, panels, pn),
                    2 => panel512_impl::<2, $p>(qs, qn, th, panels, pn),
                    3 => panel512_impl::<3, $p>(qs, qn, th, panels, pn),
                    4 => panel512_impl::<4, $p>(qs, qn, th, panels, pn),
                    5 => panel512_impl::<5, $p>(qs, qn, th, panels, pn),
                    _ => panel512_impl::<6, $p>(qs, qn, th, panels, pn),
                }
            };
        }
        // SAFETY: only reachable through `panel_variants`, after AVX-512F was
        // detected.
        unsafe {
            if pn.len() == 2 * super::LANES {
                by_queries!(2)
            } else {
                by_queries!(1)
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn exact_impl(a: &[f32], b: &[f32]) -> f64 {
        super::exact_generic(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    fn proj4_impl(c: &[f32], u: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        super::proj4_generic::<true>(c, u, r)
    }

    pub fn proj4_avx2(c: &[f32], u: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: as below.
        unsafe { proj4_impl(c, u, r) }
    }

    pub fn sq4_avx2(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: only reachable through `Kernels::new`, after AVX2 and FMA were detected.
        unsafe { sq4_impl(q, r) }
    }

    pub fn exact_avx2(a: &[f32], b: &[f32]) -> f64 {
        // SAFETY: as above.
        unsafe { exact_impl(a, b) }
    }
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod neon {
    //! `Kernels::panel` with NEON intrinsics. NEON and its fused multiply-add are part of every
    //! aarch64 CPU this target runs on (Graviton, Ampere, Grace, Apple), so there is nothing to
    //! detect; the other kernels are the portable ones with `FMA = true`, which the compiler
    //! vectorizes with the same instructions.

    use super::{GROUP, LANES};
    use std::arch::aarch64::*;

    /// Six queries by a panel of 16 rows (four vectors of four): 24 accumulators of the 32
    /// registers, with four for the panel's row vectors; `M` is a constant so that they stay
    /// in registers.
    #[target_feature(enable = "neon")]
    fn panel_impl<const M: usize>(
        qs: &[&[f32]],
        qn: &[f32],
        th: &[f32],
        panel: &[f32],
        pn: &[f32],
    ) -> [u32; GROUP] {
        let Some(d) = super::panel_dims(qs, qn, th, panel, pn, M, 1) else {
            return super::panel_generic::<true>(qs, qn, th, panel, pn);
        };
        let q: [*const f32; M] = std::array::from_fn(|i| qs[i].as_ptr());
        let p = panel.as_ptr();
        let zero = vdupq_n_f32(0.0);
        let mut acc = [[zero; 4]; M];
        for t in 0..d {
            // SAFETY: the panel holds d * LANES values and every query at least d, checked above.
            let r: [float32x4_t; 4] =
                std::array::from_fn(|v| unsafe { vld1q_f32(p.add(t * LANES + 4 * v)) });
            for i in 0..M {
                // SAFETY: as above.
                let b = unsafe { *q[i].add(t) };
                for v in 0..4 {
                    acc[i][v] = vfmaq_n_f32(acc[i][v], r[v], b);
                }
            }
        }
        // SAFETY: `pn` holds LANES values, checked above.
        let nr: [float32x4_t; 4] =
            std::array::from_fn(|v| unsafe { vld1q_f32(pn.as_ptr().add(4 * v)) });
        let two = vdupq_n_f32(2.0);
        // Lane l of a comparison becomes bit l of the mask.
        let bits: [u32; 4] = [1, 2, 4, 8];
        // SAFETY: `bits` holds four values.
        let bits = unsafe { vld1q_u32(bits.as_ptr()) };
        let mut out = [0u32; GROUP];
        for (i, (o, row)) in out.iter_mut().zip(&acc).enumerate() {
            let (n, t) = (vdupq_n_f32(qn[i]), vdupq_n_f32(th[i]));
            for (v, (&a, &r)) in row.iter().zip(&nr).enumerate() {
                // (|r|^2 + |q|^2) - 2 acc, rounded once, as the portable kernel's.
                let s = vfmsq_f32(vaddq_f32(r, n), two, a);
                // "Not greater than", unordered included: a NaN (overflowed norms) passes.
                let pass = vmvnq_u32(vcgtq_f32(s, t));
                *o |= vaddvq_u32(vandq_u32(pass, bits)) << (4 * v);
            }
        }
        out
    }

    pub fn panel_neon(
        qs: &[&[f32]],
        qn: &[f32],
        th: &[f32],
        panel: &[f32],
        pn: &[f32],
    ) -> [u32; GROUP] {
        // SAFETY: the module is compiled only where NEON is part of the target
        // (`target_feature = "neon"`), so every CPU that runs this code has it.
        unsafe {
            match qs.len() {
                0 => [0; GROUP],
                1 => panel_impl::<1>(qs, qn, th, panel, pn),
                2 => panel_impl::<2>(qs, qn, th, panel, pn),
                3 => panel_impl::<3>(qs, qn, th, panel, pn),
                4 => panel_impl::<4>(qs, qn, th, panel, pn),
                5 => panel_impl::<5>(qs, qn, th, panel, pn),
                _ => panel_impl::<6>(qs, qn, th, panel, pn),
            }
        }
    }
}

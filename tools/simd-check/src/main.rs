//! Every intrinsic panel kernel this CPU runs (AVX2, AVX-512 on x86; NEON on aarch64) must give
//! the portable kernel's masks bit for bit (`simd.rs` says why they can). The thresholds are
//! set to each lane's own value and to the next float below it, so a kernel whose sums differ
//! from the portable ones by a single ulp in any lane fails. Exits 1 on the first difference.
//!
//! Run by tools/check_simd.sh, natively and for aarch64 under qemu.

#[path = "../../../src/cluster/simd.rs"]
#[allow(dead_code)]
mod simd;

use simd::{GROUP, LANES, PanelFn};

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// One problem: `GROUP` queries of `d` values, `panels` panels of `LANES` rows stored
/// dimension-major, and their (scaled) squared norms.
struct Case {
    d: usize,
    queries: Vec<Vec<f32>>,
    qn: Vec<f32>,
    panels: Vec<f32>,
    pn: Vec<f32>,
}

impl Case {
    fn new(rng: &mut Rng, d: usize, panels: usize, scale: f32, offset: f32) -> Self {
        let row =
            |rng: &mut Rng| -> Vec<f32> { (0..d).map(|_| (offset + rng.unit()) * scale).collect() };
        let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>() * (1.0 - 1e-5);
        let queries: Vec<Vec<f32>> = (0..GROUP).map(|_| row(rng)).collect();
        let qn = queries.iter().map(|q| norm(q)).collect();
        let mut data = vec![0f32; panels * d * LANES];
        let mut pn = vec![0f32; panels * LANES];
        for p in 0..panels {
            for l in 0..LANES {
                let r = row(rng);
                for (t, &v) in r.iter().enumerate() {
                    data[(p * d + t) * LANES + l] = v;
                }
                pn[p * LANES + l] = norm(&r);
            }
        }
        Self {
            d,
            queries,
            qn,
            panels: data,
            pn,
        }
    }

    /// The portable kernel's screening value of query `i` and lane `l` (as `panel_generic`
    /// with fused multiply-adds computes it).
    fn value(&self, i: usize, l: usize) -> f32 {
        let (p, lane) = (l / LANES, l % LANES);
        let mut acc = 0f32;
        for t in 0..self.d {
            acc = self.queries[i][t].mul_add(self.panels[(p * self.d + t) * LANES + lane], acc);
        }
        (self.pn[l] + self.qn[i]) - 2.0 * acc
    }

    fn run(&self, kernel: PanelFn, m: usize, count: usize, th: &[f32]) -> [u32; GROUP] {
        let qs: Vec<&[f32]> = self.queries[..m].iter().map(Vec::as_slice).collect();
        kernel(
            &qs,
            &self.qn[..m],
            th,
            &self.panels[..count * self.d * LANES],
            &self.pn[..count * LANES],
        )
    }
}

fn main() {
    // The intrinsic kernels this CPU runs: the engine's own list, less the portable one.
    let variants: Vec<_> = simd::panel_variants()
        .into_iter()
        .filter(|v| v.0 != "portable")
        .collect();
    let names: Vec<&str> = variants.iter().map(|v| v.0).collect();
    if variants.is_empty() {
        println!("simd-check: no intrinsic panel kernel on this CPU; nothing to compare");
        return;
    }
    let portable: PanelFn = simd::panel_generic::<true>;
    let mut rng = Rng(0x5eed_0000_0000_0001);
    let mut calls = 0usize;
    for d in [1usize, 3, 4, 7, 8, 13, 100, 104, 3072] {
        for (scale, offset) in [(1e-3f32, 0.0f32), (1.0, 0.0), (1.0, 20.0), (1e3, 0.0)] {
            let case = Case::new(&mut rng, d, 2, scale, offset);
            for &(name, kernel, most) in &variants {
                for count in 1..=most {
                    for m in 1..=GROUP {
                        // Thresholds at lane `l`'s own value and just below it, and with the
                        // other queries' thresholds at other lanes' values, so both sides of
                        // every comparison are exercised.
                        for l in 0..count * LANES {
                            for below in [false, true] {
                                let th: Vec<f32> = (0..m)
                                    .map(|i| {
                                        let v = case.value(i, (l + 5 * i) % (count * LANES));
                                        if below { v.next_down() } else { v }
                                    })
                                    .collect();
                                let want = case.run(portable, m, count, &th);
                                let got = case.run(kernel, m, count, &th);
                                calls += 1;
                                if got != want {
                                    eprintln!(
                                        "simd-check: {name} x{count} differs from the portable \
                                         kernel: d={d} scale={scale} offset={offset} m={m} \
                                         lane {l} below={below}: {got:x?} vs {want:x?}"
                                    );
                                    std::process::exit(1);
                                }
                                // The harness's own check: query 0's threshold is lane l's
                                // value, which passes exactly when not lowered.
                                if (want[0] >> l & 1 == 1) == below {
                                    eprintln!(
                                        "simd-check: Case::value is not the portable kernel's \
                                         value (d={d} lane {l} below={below})"
                                    );
                                    std::process::exit(1);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Overflowed norms are NaN: every lane must pass, as in the portable kernel.
    let mut case = Case::new(&mut rng, 8, 2, 1.0, 0.0);
    case.pn.iter_mut().for_each(|v| *v = f32::NAN);
    for &(name, kernel, most) in &variants {
        let got = case.run(kernel, GROUP, most, &[0.0; GROUP]);
        let all = if most == 2 { u32::MAX } else { 0xffff };
        if got != [all; GROUP] {
            eprintln!("simd-check: {name} does not pass NaN values: {got:x?}");
            std::process::exit(1);
        }
        calls += 1;
    }
    println!(
        "simd-check ({}): {} equal the portable kernel in {calls} calls",
        std::env::consts::ARCH,
        names.join(", ")
    );
}

//! The 2-D map of a batch: its rows on the first two PCA axes, coloured by the Task their cluster
//! became (so a Task's card and its points share a colour), noise in grey underneath.

use std::fmt::Write;

use crate::store::StoredMapPoint;

/// Distinguishable colours (Tableau 10 and a few more), picked by Task id or cluster.
const PALETTE: [&str; 12] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#17becf", "#8c564b", "#bcbd22",
];
pub const NOISE: &str = "#c4c4c4";

/// The colour of a Task everywhere in the report.
pub fn task_color(task_id: i64) -> &'static str {
    PALETTE[task_id.rem_euclid(PALETTE.len() as i64) as usize]
}

fn point_color(p: &StoredMapPoint) -> &'static str {
    match (p.cluster, p.task_id) {
        (c, _) if c < 0 => NOISE,
        (_, Some(id)) => task_color(id),
        (c, None) => PALETTE[c.rem_euclid(PALETTE.len() as i32) as usize],
    }
}

/// Each axis centred on its median, in units of its median absolute deviation, through asinh:
/// linear near the centre and logarithmic far out. PCA's first axes are pulled by the largest
/// problems, so a linear scale shows those far away and squeezes everything else into a dot.
fn compress(values: &[f64]) -> Vec<f64> {
    let median = |v: &mut Vec<f64>| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = median(&mut values.to_vec());
    let s = median(&mut values.iter().map(|v| (v - m).abs()).collect());
    let s = if s > 0.0 { s } else { 1.0 };
    values.iter().map(|v| ((v - m) / s).asinh()).collect()
}

/// An SVG map, `width` x `height`, of `points` scaled to fill it (see [`compress`]). The axes
/// are not drawn: their units mean nothing to a reader, only nearness does.
pub fn svg(points: &[StoredMapPoint], width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    let pad = 12.0;
    let shown: Vec<&StoredMapPoint> = points
        .iter()
        .filter(|p| p.x.is_finite() && p.y.is_finite())
        .collect();
    let xs = compress(&shown.iter().map(|p| f64::from(p.x)).collect::<Vec<_>>());
    let ys = compress(&shown.iter().map(|p| f64::from(p.y)).collect::<Vec<_>>());
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, (hi - lo).max(1e-9))
    };
    let ((x0, xspan), (y0, yspan)) = (range(&xs), range(&ys));
    let sx = |x: f64| pad + (x - x0) / xspan * (w - 2.0 * pad);
    // SVG's y grows downwards.
    let sy = |y: f64| h - pad - (y - y0) / yspan * (h - 2.0 * pad);
    let mut out = String::new();
    let clustered = points.iter().filter(|p| p.cluster >= 0).count();
    let _ = write!(
        out,
        "<svg class=\"map\" id=\"cluster-map\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{} segments, {clustered} in clusters\">\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#fbfbfd\"/>",
        shown.len()
    );
    // Noise first so the clusters draw on top of it.
    let mut order: Vec<usize> = (0..shown.len()).collect();
    order.sort_by_key(|&i| shown[i].cluster >= 0);
    for i in order {
        let p = shown[i];
        let (x, y) = (sx(xs[i]), sy(ys[i]));
        if p.cluster < 0 {
            let _ = write!(
                out,
                "<circle class=\"noise\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" fill=\"{NOISE}\"/>"
            );
        } else {
            let title = match p.task_id {
                Some(id) => format!("cluster {} · Task {id}", p.cluster),
                None => format!("cluster {}", p.cluster),
            };
            let _ = write!(
                out,
                "<circle class=\"pt\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\" \
                 fill-opacity=\"0.85\"><title>{title}</title></circle>",
                point_color(p)
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_keeps_order_and_tames_outliers() {
        let c = compress(&[0.0, 1.0, 2.0, 3.0, 1000.0]);
        assert!(c.windows(2).all(|w| w[0] < w[1]), "{c:?}");
        assert!(c[4] - c[3] < 10.0 * (c[3] - c[2]), "{c:?}");
    }

    #[test]
    fn points_fit_the_canvas_and_noise_is_grey() {
        let pts = [
            StoredMapPoint {
                x: -1.0,
                y: -1.0,
                cluster: -1,
                task_id: None,
            },
            StoredMapPoint {
                x: 1.0,
                y: 1.0,
                cluster: 0,
                task_id: Some(3),
            },
            StoredMapPoint {
                x: 0.0,
                y: f32::NAN,
                cluster: 1,
                task_id: None,
            },
        ];
        let s = svg(&pts, 200, 100);
        assert_eq!(s.matches("<circle").count(), 2, "the NaN point is left out");
        assert!(s.contains(&format!("fill=\"{NOISE}\"")));
        assert!(s.contains(task_color(3)));
        // Two finite points: the corners of the drawing area.
        assert!(s.contains("cx=\"12.0\" cy=\"88.0\""), "{s}");
        assert!(s.contains("cx=\"188.0\" cy=\"12.0\""), "{s}");
    }
}

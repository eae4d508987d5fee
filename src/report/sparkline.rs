//! A Task's occurrences over time as a small inline SVG: a line with a filled area, scaled to
//! the Task's own busiest day, with the last day marked.

use std::fmt::Write;

/// An SVG sparkline of `counts` (one value a day), `width` x `height` pixels.
pub fn svg(counts: &[u32], width: u32, height: u32) -> String {
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let (w, h) = (f64::from(width), f64::from(height));
    let pad = 2.0;
    let step = if counts.len() > 1 {
        (w - 2.0 * pad) / (counts.len() - 1) as f64
    } else {
        0.0
    };
    let point = |i: usize, c: u32| {
        let x = pad + step * i as f64;
        let y = h - pad - (h - 2.0 * pad) * f64::from(c) / f64::from(max);
        (x, y)
    };
    let mut line = String::new();
    for (i, &c) in counts.iter().enumerate() {
        let (x, y) = point(i, c);
        let _ = write!(line, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"spark\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         role=\"img\" aria-label=\"{total} occurrences over {} days\">\
         <title>{total} occurrences over {} days, busiest day {max}</title>",
        counts.len(),
        counts.len()
    );
    if let Some(&last) = counts.last() {
        let (x0, _) = point(0, 0);
        let (xn, yn) = point(counts.len() - 1, last);
        let base = h - pad;
        let _ = write!(
            out,
            "<polygon points=\"{x0:.1},{base:.1} {line} {xn:.1},{base:.1}\" fill=\"#dbe7fb\"/>\
             <polyline points=\"{line}\" fill=\"none\" stroke=\"#2f6fdb\" stroke-width=\"1.5\"/>\
             <circle cx=\"{xn:.1}\" cy=\"{yn:.1}\" r=\"2\" fill=\"#2f6fdb\"/>"
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_touch_the_top_and_zeros_the_bottom() {
        let s = svg(&[0, 4, 2], 100, 20);
        assert!(
            s.contains("<polyline points=\"2.0,18.0 50.0,2.0 98.0,10.0\""),
            "{s}"
        );
        assert!(s.contains("6 occurrences over 3 days"), "{s}");
        assert!(svg(&[], 100, 20).ends_with("</svg>"));
    }
}

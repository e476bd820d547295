//! `wharf bench --svg FILE`: one run's latencies as a histogram, hand-written SVG (a few
//! rectangles and labels; no plotting crate in the broker's binary for that). Buckets are
//! spaced logarithmically, so the tail (where p99 and the maximum live) is as readable as
//! the body; dashed lines mark p50, p99 and p99.9.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const BUCKETS: usize = 40;

/// `sorted`: latencies in ms, ascending; `title`: what was measured.
pub fn latency_svg(sorted: &[f64], title: &str) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12" role="img" aria-label="{t}"><title>{t}</title><rect width="100%" height="100%" fill="#fff"/><text x="{LEFT}" y="22" font-size="15" font-weight="bold">{t}</text>"##,
        t = title.replace('&', "&amp;").replace('<', "&lt;")
    );
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        svg.push_str(r#"<text x="60" y="80">no latencies were measured</text></svg>"#);
        return svg;
    };
    // Log-spaced edges from the fastest to the slowest (at least a decade apart).
    let lo = first.max(1e-3).log10();
    let hi = last.max(first * 10.0).max(1e-2).log10();
    let edge = |i: usize| 10f64.powf(lo + (hi - lo) * i as f64 / BUCKETS as f64);
    let mut counts = [0usize; BUCKETS];
    for &ms in sorted {
        let at = ((ms.max(1e-3).log10() - lo) / (hi - lo) * BUCKETS as f64) as usize;
        counts[at.min(BUCKETS - 1)] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |ms: f64| LEFT + (ms.max(1e-3).log10() - lo) / (hi - lo) * plot_w;
    let bar_w = plot_w / BUCKETS as f64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let h = n as f64 / peak * plot_h;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#0072B2"><title>{n} between {:.3} and {:.3} ms</title></rect>"##,
            LEFT + i as f64 * bar_w,
            TOP + plot_h - h,
            (bar_w - 1.0).max(1.0),
            edge(i),
            edge(i + 1)
        );
    }
    // Axis: a tick per decade and half-decade.
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#000"/>"##,
        WIDTH - RIGHT,
        y = TOP + plot_h
    );
    let mut decade = lo.floor() as i32;
    while f64::from(decade) <= hi {
        for m in [1.0, 3.0] {
            let ms = m * 10f64.powi(decade);
            if ms.log10() < lo || ms.log10() > hi {
                continue;
            }
            let x = x_of(ms);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#000"/><text x="{x:.1}" y="{ty}" text-anchor="middle">{ms}</text>"##,
                y0 = TOP + plot_h,
                y1 = TOP + plot_h + 5.0,
                ty = TOP + plot_h + 18.0
            );
        }
        decade += 1;
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">latency, ms (log scale); {} samples</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        sorted.len()
    );
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    for (name, q, colour) in [
        ("p50", 0.5, "#009E73"),
        ("p99", 0.99, "#E69F00"),
        ("p99.9", 0.999, "#D55E00"),
    ] {
        let ms = at(q);
        let x = x_of(ms);
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="{colour}">{name} {ms:.2}</text>"#,
            TOP + plot_h,
            x + 3.0,
            TOP + 12.0 + 14.0 * (q * 10.0).floor().min(2.0)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_in_a_bar_and_the_percentiles_are_marked() {
        let mut ms: Vec<f64> = (1..=1000).map(|i| i as f64 / 100.0).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let svg = latency_svg(&ms, "latency <test>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let counted: usize = svg
            .split("<title>")
            .skip(2)
            .filter_map(|t| t.split(' ').next()?.parse::<usize>().ok())
            .sum();
        assert_eq!(counted, 1000, "every sample in one bucket");
        for mark in ["p50 5.01", "p99 9.90", "p99.9 9.99", "latency &lt;test>"] {
            assert!(svg.contains(mark), "{mark} missing");
        }
        assert!(latency_svg(&[], "none").contains("no latencies"));
    }
}

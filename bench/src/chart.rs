//! The comparison as pictures: SVG bar charts written next to the Markdown tables, one panel
//! per scenario (each with its own scale: fan-out deliveries and fsync-bound publishes differ
//! by three orders of magnitude), one horizontal bar per system with its value written on it.
//!
//! Hand-written rather than drawn with `plotters`: horizontal bars, text and a legend are
//! ~150 lines of SVG text, while plotters' SVG backend needs a font feature (and font files
//! or their bytes) for any text, and pulls a dozen crates into the benchmark runner.

use std::fmt::Write;

use crate::figure::Figure;

const WIDTH: f64 = 760.0;
const LABEL_WIDTH: f64 = 170.0;
const BAR_HEIGHT: f64 = 16.0;
const BAR_GAP: f64 = 4.0;
const PANEL_GAP: f64 = 26.0;
/// One colour per series (colour-blind safe: the Okabe-Ito palette).
const COLOURS: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

/// One bar: a system's value in one series (e.g. "p99").
struct Bar {
    label: String,
    series: usize,
    value: f64,
    text: String,
}

struct Panel {
    title: String,
    bars: Vec<Bar>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `series` names the bars' colours in the legend (one name: no legend).
fn render(title: &str, series: &[&str], panels: &[Panel]) -> String {
    let rows: usize = panels.iter().map(|p| p.bars.len()).sum();
    let legend = if series.len() > 1 { 22.0 } else { 0.0 };
    let height = 40.0
        + legend
        + panels.len() as f64 * (PANEL_GAP + 6.0)
        + rows as f64 * (BAR_HEIGHT + BAR_GAP)
        + 10.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12" role="img" aria-label="{t}"><title>{t}</title><rect width="100%" height="100%" fill="#fff"/><text x="10" y="22" font-size="15" font-weight="bold">{t}</text>"##,
        t = escape(title)
    );
    let mut y = 36.0;
    if series.len() > 1 {
        let mut x = 10.0;
        for (i, name) in series.iter().enumerate() {
            let _ = write!(
                svg,
                r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                COLOURS[i % COLOURS.len()],
                x + 16.0,
                y + 10.5,
                escape(name)
            );
            x += 24.0 + 7.5 * name.len() as f64;
        }
        y += legend;
    }
    let plot = WIDTH - LABEL_WIDTH - 20.0;
    for panel in panels {
        y += PANEL_GAP;
        let _ = write!(
            svg,
            r#"<text x="10" y="{}" font-weight="bold">{}</text>"#,
            y - 6.0,
            escape(&panel.title)
        );
        let max = panel.bars.iter().map(|b| b.value).fold(0.0, f64::max);
        for bar in &panel.bars {
            let w = if max > 0.0 {
                (bar.value / max * plot).max(1.0)
            } else {
                1.0
            };
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{LABEL_WIDTH}" y="{y}" width="{w:.1}" height="{BAR_HEIGHT}" fill="{}"><title>{} {}</title></rect>"#,
                LABEL_WIDTH - 6.0,
                y + BAR_HEIGHT - 4.0,
                escape(&bar.label),
                COLOURS[bar.series % COLOURS.len()],
                escape(&bar.label),
                escape(&bar.text)
            );
            // The value inside a long bar, after a short one.
            let (tx, anchor, fill) = if w > plot * 0.6 {
                (LABEL_WIDTH + w - 4.0, "end", "#fff")
            } else {
                (LABEL_WIDTH + w + 4.0, "start", "#000")
            };
            let _ = write!(
                svg,
                r#"<text x="{tx:.1}" y="{}" text-anchor="{anchor}" fill="{fill}">{}</text>"#,
                y + BAR_HEIGHT - 4.0,
                escape(&bar.text)
            );
            y += BAR_HEIGHT + BAR_GAP;
        }
        y += 6.0;
    }
    svg.push_str("</svg>\n");
    svg
}

fn rate_text(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.0}k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
    }
}

/// A figure's bars: (series, value, the value as written on the bar).
type Values = dyn Fn(&Figure) -> Vec<(usize, f64, String)>;

/// Panels of `scenarios`, each with the figures of `systems` that have a value.
fn panels(
    figures: &[Figure],
    systems: &[&str],
    scenarios: &[String],
    values: &Values,
) -> Vec<Panel> {
    scenarios
        .iter()
        .filter_map(|scenario| {
            let bars: Vec<Bar> = systems
                .iter()
                .filter_map(|s| {
                    figures
                        .iter()
                        .find(|f| f.system == *s && &f.scenario == scenario)
                })
                .flat_map(|f| {
                    values(f).into_iter().map(|(series, value, text)| Bar {
                        label: f.system.clone(),
                        series,
                        value,
                        text,
                    })
                })
                .collect();
            (!bars.is_empty()).then(|| Panel {
                title: scenario.clone(),
                bars,
            })
        })
        .collect()
}

/// The charts of one table: (file name, SVG) for throughput, latency and RSS.
pub fn charts(
    figures: &[Figure],
    systems: &[&str],
    scenarios: &[String],
    prefix: &str,
    note: &str,
) -> Vec<(String, String)> {
    // The latency scenario runs at a fixed rate: its throughput says nothing.
    let paced: Vec<String> = scenarios
        .iter()
        .filter(|s| s.as_str() != "latency")
        .cloned()
        .collect();
    let throughput = panels(figures, systems, &paced, &|f| {
        vec![(0, f.rate, rate_text(f.rate))]
    });
    let latency = panels(figures, systems, scenarios, &|f| {
        let mut out = Vec::new();
        if let Some(p50) = f.p50_ms {
            out.push((0, p50, format!("p50 {p50:.2} ms")));
        }
        if let Some(p99) = f.p99_ms {
            out.push((1, p99, format!("p99 {p99:.2} ms")));
        }
        out
    });
    let rss = panels(figures, systems, scenarios, &|f| {
        f.rss_peak_mb
            .map(|mb| vec![(0, mb, format!("{mb:.1} MB"))])
            .unwrap_or_default()
    });
    let sets = [
        (
            "throughput",
            "Throughput, events/s (fan-out: deliveries/s)",
            &["rate"][..],
            throughput,
        ),
        (
            "latency",
            "Confirm / end-to-end latency, ms",
            &["p50", "p99"][..],
            latency,
        ),
        ("rss", "Peak RSS, MB", &["RSS"][..], rss),
    ];
    // A chart with nothing to draw (a table without RSS figures) is not written.
    sets.into_iter()
        .filter(|(_, _, _, panels)| !panels.is_empty())
        .map(|(name, title, series, panels)| {
            (
                format!("{prefix}{name}.svg"),
                render(&format!("{title}, {note}"), series, &panels),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_holds_every_figure_and_is_well_formed() {
        let figure = |system: &str, scenario: &str, rate: f64| Figure {
            system: system.into(),
            scenario: scenario.into(),
            rate,
            p50_ms: Some(0.5),
            p99_ms: Some(2.0),
            rss_peak_mb: Some(40.0),
            ..Figure::default()
        };
        let figures = [
            figure("wharf", "publish", 300_000.0),
            figure("redis", "publish", 280_000.0),
            figure("wharf", "fanout", 2_100_000.0),
        ];
        let scenarios = ["publish".to_owned(), "fanout".to_owned()];
        let charts = charts(
            &figures,
            &["wharf", "redis"],
            &scenarios,
            "single-",
            "a <test>",
        );
        assert_eq!(charts.len(), 3);
        let (name, svg) = &charts[0];
        assert_eq!(name, "single-throughput.svg");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in ["300k/s", "280k/s", "2.10M/s", "a &lt;test&gt;"] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
        assert_eq!(
            svg.matches("<rect x=\"170\"").count(),
            3,
            "one bar per figure"
        );
        assert!(charts[1].1.contains("p99 2.00 ms"));
        assert!(charts[2].1.contains("40.0 MB"));
    }
}

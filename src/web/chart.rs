//! Inline SVG for the console: a seat bar (in use of total, revoking shaded) and the
//! usage-over-time chart. Presentation attributes only (no `style`), so the console's
//! content security policy needs no exception.

use super::pages::esc;
use crate::core::Timestamp;
use crate::store::UsageSample;
use std::fmt::Write as _;

const BAR_W: f64 = 220.0;
const BAR_H: f64 = 14.0;

/// A bar of `in_use` (of which `revoking`) out of `total`; red when over.
pub fn bar(in_use: u64, revoking: u64, total: u64) -> String {
    let scale = |n: u64| {
        if total == 0 {
            if n > 0 {
                BAR_W
            } else {
                0.0
            }
        } else {
            (n as f64 / total as f64 * BAR_W).min(BAR_W)
        }
    };
    let used = scale(in_use);
    let rev = scale(revoking.min(in_use));
    let colour = if in_use > total {
        "#c0392b"
    } else if total > 0 && in_use * 10 >= total * 9 {
        "#d68910"
    } else {
        "#2e86c1"
    };
    format!(
        "<svg class=\"bar\" width=\"{BAR_W}\" height=\"{BAR_H}\" viewBox=\"0 0 {BAR_W} {BAR_H}\" role=\"img\" \
         aria-label=\"{in_use} of {total} in use\">\
         <rect width=\"{BAR_W}\" height=\"{BAR_H}\" rx=\"3\" fill=\"#e5e8e8\"/>\
         <rect width=\"{used:.1}\" height=\"{BAR_H}\" rx=\"3\" fill=\"{colour}\"/>\
         <rect x=\"{:.1}\" width=\"{rev:.1}\" height=\"{BAR_H}\" fill=\"#f5b041\"/></svg>",
        used - rev
    )
}

/// One series: (instant, in use, total) for one key and feature.
pub fn series(samples: &[UsageSample], key: &str, feature: &str) -> Vec<(Timestamp, u64, u64)> {
    samples
        .iter()
        .filter_map(|s| {
            s.rows
                .iter()
                .find(|r| r.key_id == key && r.feature == feature)
                .map(|r| (s.at, r.in_use, r.total))
        })
        .collect()
}

/// Keeps at most `max` points: each bucket of time keeps its highest use (a peak must
/// not vanish from a 30-day chart).
pub fn downsample(
    points: &[(Timestamp, u64, u64)],
    from: Timestamp,
    to: Timestamp,
    max: usize,
) -> Vec<(Timestamp, u64, u64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let span = to.since(from).max(1);
    let mut buckets: Vec<Option<(Timestamp, u64, u64)>> = vec![None; max];
    for p in points {
        let i =
            ((p.0.since(from) as u128 * max as u128) / span as u128).min(max as u128 - 1) as usize;
        let b = &mut buckets[i];
        match b {
            Some(q) if q.1 >= p.1 => q.2 = q.2.max(p.2),
            _ => *b = Some(*p),
        }
    }
    buckets.into_iter().flatten().collect()
}

/// A line chart of seats in use (and a dashed line at the total) from `from` to `to`.
pub fn usage_chart(
    title: &str,
    points: &[(Timestamp, u64, u64)],
    from: Timestamp,
    to: Timestamp,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 200.0;
    const L: f64 = 40.0;
    const B: f64 = 22.0;
    let top = points
        .iter()
        .map(|p| p.1.max(p.2))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let span = to.since(from).max(1) as f64;
    let x = |t: Timestamp| L + (t.since(from) as f64 / span) * (W - L - 8.0);
    let y = |n: u64| (H - B) - (n as f64 / top) * (H - B - 10.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{}\"><rect width=\"{W}\" height=\"{H}\" fill=\"#fbfcfc\"/>",
        esc(title)
    );
    // Axis: 0, the top, and the two ends of the span.
    let _ = write!(
        svg,
        "<line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#aab7b8\"/>\
         <text x=\"{2}\" y=\"{3}\" font-size=\"11\" text-anchor=\"end\" fill=\"#566573\">0</text>\
         <text x=\"{2}\" y=\"{4}\" font-size=\"11\" text-anchor=\"end\" fill=\"#566573\">{5}</text>\
         <text x=\"{L}\" y=\"{6}\" font-size=\"11\" fill=\"#566573\">{7}</text>\
         <text x=\"{1}\" y=\"{6}\" font-size=\"11\" text-anchor=\"end\" fill=\"#566573\">{8}</text>",
        H - B,
        W - 8.0,
        L - 4.0,
        H - B + 4.0,
        y(top as u64) + 4.0,
        top as u64,
        H - 6.0,
        esc(&from.rfc3339()),
        esc(&to.rfc3339()),
    );
    if points.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#566573\">no samples in this span yet</text>",
            W / 2.0,
            H / 2.0
        );
    } else {
        // Steps: a count holds until the next sample says otherwise.
        let line = |f: &dyn Fn(&(Timestamp, u64, u64)) -> u64| {
            let mut out: Vec<String> = Vec::with_capacity(points.len() * 2);
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    out.push(format!("{:.1},{:.1}", x(p.0), y(f(&points[i - 1]))));
                }
                out.push(format!("{:.1},{:.1}", x(p.0), y(f(p))));
            }
            out.join(" ")
        };
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#7f8c8d\" stroke-dasharray=\"4 3\"/>\
             <polyline points=\"{}\" fill=\"none\" stroke=\"#2e86c1\" stroke-width=\"2\"/>",
            line(&|p| p.2),
            line(&|p| p.1)
        );
        for p in points.iter().rev().take(1) {
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#2e86c1\"><title>{} in use of {} at {}</title></circle>",
                x(p.0),
                y(p.1),
                p.1,
                p.2,
                esc(&p.0.rfc3339())
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_the_peak_of_each_bucket() {
        let t = |s: u64| Timestamp::from_secs(s);
        let pts: Vec<_> = (0..100)
            .map(|i| (t(i), if i == 42 { 9 } else { 1 }, 10))
            .collect();
        let d = downsample(&pts, t(0), t(100), 10);
        assert_eq!(d.len(), 10);
        assert!(d.iter().any(|p| p.1 == 9), "{d:?}");
    }

    #[test]
    fn bars_and_charts_are_svg_with_the_numbers() {
        let b = bar(3, 1, 4);
        assert!(b.starts_with("<svg") && b.contains("3 of 4 in use"));
        assert!(bar(5, 0, 4).contains("#c0392b"), "over the total shows red");
        let t = Timestamp::from_secs(1_000);
        let c = usage_chart("camera", &[(t, 2, 16)], t, t.plus(60_000));
        assert!(c.contains("<polyline") && c.contains("2 in use of 16"));
        assert!(usage_chart("x", &[], t, t.plus(1)).contains("no samples"));
    }
}

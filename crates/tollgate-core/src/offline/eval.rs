//! Routing quality in RouteLLM's terms, from prompts labelled with the
//! score a weak and a strong model got on each.
//!
//! A router with a threshold sends the prompts it scores highest to the
//! strong model. Sweeping the threshold from "none" to "all" traces quality
//! against the share of strong calls: at share 0 the quality is the weak
//! model's, at share 1 the strong model's. The performance gap recovered
//! at a share is `(quality - weak) / (strong - weak)`; APGR is the area
//! under that curve over shares 0..1 (0.5 for a random router, the
//! diagonal). CPT(x) is the smallest strong-call share that recovers x of
//! the gap. The saving at 95% of strong quality compares the cheapest mix
//! that reaches it with always calling the strong model.
//!
//! Equal scores are one step of the sweep: the curve joins the points
//! before and after a group of ties with a straight line, which is what a
//! random order within the group gives on average.
//!
//! Pure: the caller supplies the rows and writes the report.

use super::chart::{Guide, LineChart, Series};
use std::collections::BTreeMap;

/// One labelled prompt with the score a router gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredRow {
    pub source: String,
    /// Higher means the router would rather send it to the strong model.
    pub score: f64,
    /// The weak and the strong model's scores on this prompt, in `[0, 1]`.
    pub weak: f64,
    pub strong: f64,
}

/// The quality-against-share curve and the figures read off it.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityReport {
    pub rows: usize,
    /// Mean quality of the weak model alone and of the strong model alone.
    pub weak_quality: f64,
    pub strong_quality: f64,
    /// Area under the performance-gap-recovered curve; `None` when the two
    /// models are equally good on these rows (there is no gap).
    pub apgr: Option<f64>,
    /// Strong-call share needed to recover 50% and 80% of the gap.
    pub cpt50: Option<f64>,
    pub cpt80: Option<f64>,
    /// Smallest strong-call share whose quality reaches 95% of the strong
    /// model's, and the cost saved there against always calling the strong
    /// model (given the weak/strong cost ratio per request).
    pub share_at_95: Option<f64>,
    pub saving_at_95: Option<f64>,
    /// `(strong-call share, mean quality)`, from share 0 to share 1.
    pub curve: Vec<(f64, f64)>,
}

/// Evaluates a router's scores on labelled rows. `cost_ratio` is what a
/// weak call costs relative to a strong one (e.g. 0.06).
pub fn evaluate(rows: &[ScoredRow], cost_ratio: f64) -> QualityReport {
    let n = rows.len();
    if n == 0 {
        return QualityReport {
            rows: 0,
            weak_quality: 0.0,
            strong_quality: 0.0,
            apgr: None,
            cpt50: None,
            cpt80: None,
            share_at_95: None,
            saving_at_95: None,
            curve: Vec::new(),
        };
    }
    let total = n as f64;
    let weak_sum: f64 = rows.iter().map(|r| r.weak).sum();
    let strong_sum: f64 = rows.iter().map(|r| r.strong).sum();
    let (weak_quality, strong_quality) = (weak_sum / total, strong_sum / total);

    let mut order: Vec<&ScoredRow> = rows.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut curve = vec![(0.0, weak_quality)];
    let mut gained = 0.0;
    let mut taken = 0usize;
    let mut i = 0;
    while i < order.len() {
        // Take the whole group of equal scores at once.
        let mut j = i;
        while j < order.len() && order[j].score.total_cmp(&order[i].score).is_eq() {
            gained += order[j].strong - order[j].weak;
            j += 1;
        }
        taken += j - i;
        curve.push((taken as f64 / total, (weak_sum + gained) / total));
        i = j;
    }

    let gap = strong_quality - weak_quality;
    let has_gap = gap.abs() > 1e-12;
    let recovered = |q: f64| (q - weak_quality) / gap;
    let apgr = has_gap
        .then(|| curve.windows(2).map(|w| (w[1].0 - w[0].0) * (recovered(w[0].1) + recovered(w[1].1)) / 2.0).sum());
    let first_share_reaching = |target: f64, value: &dyn Fn(f64) -> f64| -> Option<f64> {
        if value(curve[0].1) >= target {
            return Some(0.0);
        }
        curve.windows(2).find(|w| value(w[1].1) >= target).map(|w| {
            let (a, b) = (value(w[0].1), value(w[1].1));
            let t = if (b - a).abs() < 1e-12 { 1.0 } else { (target - a) / (b - a) };
            w[0].0 + t * (w[1].0 - w[0].0)
        })
    };
    let cpt50 = if has_gap { first_share_reaching(0.5, &recovered) } else { None };
    let cpt80 = if has_gap { first_share_reaching(0.8, &recovered) } else { None };
    let share_at_95 = first_share_reaching(0.95 * strong_quality, &|q| q);
    let saving_at_95 = share_at_95.map(|s| (1.0 - s) * (1.0 - cost_ratio));
    QualityReport { rows: n, weak_quality, strong_quality, apgr, cpt50, cpt80, share_at_95, saving_at_95, curve }
}

/// The report of a random router on the same rows: the straight line from
/// the weak model's quality to the strong model's (its expectation).
pub fn random_router(rows: &[ScoredRow], cost_ratio: f64) -> QualityReport {
    let flat: Vec<ScoredRow> = rows.iter().map(|r| ScoredRow { score: 0.0, ..r.clone() }).collect();
    evaluate(&flat, cost_ratio)
}

/// The oracle: knows which prompts the strong model does better on.
pub fn oracle_router(rows: &[ScoredRow], cost_ratio: f64) -> QualityReport {
    let known: Vec<ScoredRow> = rows.iter().map(|r| ScoredRow { score: r.strong - r.weak, ..r.clone() }).collect();
    evaluate(&known, cost_ratio)
}

/// Rows grouped by source, in name order.
pub fn by_source(rows: &[ScoredRow]) -> BTreeMap<&str, Vec<ScoredRow>> {
    let mut groups: BTreeMap<&str, Vec<ScoredRow>> = BTreeMap::new();
    for r in rows {
        groups.entry(r.source.as_str()).or_default().push(r.clone());
    }
    groups
}

/// The median APGR over per-source reports: how well a router ranks
/// prompts within a source, where the overall figure also rewards telling
/// sources apart. Sources without a gap (no APGR) are left out; `None`
/// when none has one. With an even count, the mean of the middle two.
pub fn median_apgr<'a>(reports: impl IntoIterator<Item = &'a QualityReport>) -> Option<f64> {
    let mut apgrs: Vec<f64> = reports.into_iter().filter_map(|r| r.apgr).collect();
    if apgrs.is_empty() {
        return None;
    }
    apgrs.sort_by(f64::total_cmp);
    let mid = apgrs.len() / 2;
    Some(if apgrs.len() % 2 == 1 { apgrs[mid] } else { (apgrs[mid - 1] + apgrs[mid]) / 2.0 })
}

/// An SVG chart of quality against strong-call share, one line per named
/// curve, with the weak and strong models' quality as horizontal guides.
pub fn chart_svg(title: &str, curves: &[(&str, &QualityReport)]) -> String {
    let Some((_, first)) = curves.first() else { return String::new() };
    let (weak, strong) = (first.weak_quality, first.strong_quality);
    let mut low = weak.min(strong);
    let mut high = weak.max(strong);
    for (_, c) in curves {
        for &(_, q) in &c.curve {
            low = low.min(q);
            high = high.max(q);
        }
    }
    let pad = ((high - low) * 0.05).max(0.01);
    let (low, high) = (low - pad, high + pad);
    let fifths = (0..=5).map(|k| f64::from(k) / 5.0);
    let chart = LineChart {
        title: title.to_owned(),
        x_label: "share of calls to the strong model".to_owned(),
        y_label: Some("mean quality".to_owned()),
        x_range: (0.0, 1.0),
        y_range: (low, high),
        x_ticks: fifths.clone().map(|share| (share, format!("{:.0}%", share * 100.0))).collect(),
        y_ticks: fifths
            .map(|f| {
                let q = low + (high - low) * f;
                (q, format!("{q:.2}"))
            })
            .collect(),
        guides: vec![
            Guide { y: strong, label: format!("strong model {strong:.3}") },
            Guide { y: weak, label: format!("weak model {weak:.3}") },
        ],
        series: curves
            .iter()
            .map(|(name, report)| Series {
                name: (*name).to_owned(),
                legend: format!("{name}{}", report.apgr.map_or(String::new(), |a| format!(" (APGR {a:.3})"))),
                points: thinned(&report.curve).collect(),
            })
            .collect(),
        right_margin: 170.0,
    };
    chart.to_svg()
}

/// At most about `CHART_POINTS` points of a curve (a point per distinct
/// score can mean thousands), always with both ends; at the chart's width
/// the dropped points are less than a pixel apart.
fn thinned(curve: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    const CHART_POINTS: usize = 400;
    let step = curve.len().div_ceil(CHART_POINTS).max(1);
    let last = curve.len().saturating_sub(1);
    curve.iter().enumerate().filter(move |(i, _)| i % step == 0 || *i == last).map(|(_, &p)| p)
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    fn row(score: f64, weak: f64, strong: f64) -> ScoredRow {
        ScoredRow { source: "s".into(), score, weak, strong }
    }

    /// Four prompts; the strong model only helps on the last two.
    fn rows(scores: [f64; 4]) -> Vec<ScoredRow> {
        vec![row(scores[0], 1.0, 1.0), row(scores[1], 0.0, 0.0), row(scores[2], 0.0, 1.0), row(scores[3], 0.0, 1.0)]
    }

    #[test]
    fn a_router_that_scores_the_helped_prompts_highest_recovers_the_gap_with_half_the_calls() {
        let r = evaluate(&rows([0.1, 0.2, 0.9, 0.8]), 0.1);
        assert_eq!((r.weak_quality, r.strong_quality), (0.25, 0.75));
        assert!(close(r.cpt50, 0.25), "{:?}", r.cpt50);
        assert!(close(r.cpt80, 0.4), "{:?}", r.cpt80);
        // PGR rises 0 → 0.5 → 1 over shares 0, 0.25, 0.5 and stays at 1.
        assert!(close(r.apgr, 0.0625 + 0.1875 + 0.5), "{:?}", r.apgr);
    }

    #[test]
    fn a_random_router_is_the_diagonal() {
        let r = random_router(&rows([0.1, 0.2, 0.9, 0.8]), 0.1);
        assert_eq!(r.curve, vec![(0.0, 0.25), (1.0, 0.75)]);
        assert!(close(r.apgr, 0.5));
        assert!(close(r.cpt50, 0.5));
        assert!(close(r.cpt80, 0.8));
    }

    #[test]
    fn a_router_that_scores_the_helped_prompts_lowest_is_worse_than_random() {
        let r = evaluate(&rows([0.9, 0.8, 0.1, 0.2]), 0.1);
        assert!(r.apgr.unwrap_or(1.0) < 0.5);
    }

    #[test]
    fn the_oracle_recovers_everything_first() {
        let r = oracle_router(&rows([0.0; 4]), 0.1);
        assert!(close(r.cpt80, 0.4), "{:?}", r.cpt80);
    }

    #[test]
    fn the_saving_at_95_percent_counts_the_weak_calls_at_their_price() {
        let r = evaluate(&rows([0.1, 0.2, 0.9, 0.8]), 0.1);
        // 95% of 0.75 is 0.7125: 0.25 + 0.4625 of the 0.5 gap, at share 0.4625.
        assert!(close(r.share_at_95, 0.4625), "{:?}", r.share_at_95);
        assert!(close(r.saving_at_95, (1.0 - 0.4625) * 0.9), "{:?}", r.saving_at_95);
    }

    #[test]
    fn without_a_gap_there_is_no_apgr() {
        let r = evaluate(&[row(0.5, 1.0, 1.0), row(0.2, 0.0, 0.0)], 0.1);
        assert_eq!((r.apgr, r.cpt50), (None, None));
        assert_eq!(r.share_at_95, Some(0.0));
    }

    #[test]
    fn no_rows_is_an_empty_report() {
        assert_eq!(evaluate(&[], 0.1).rows, 0);
    }

    #[test]
    fn the_median_apgr_skips_sources_without_a_gap_and_averages_the_middle_pair() {
        let good = evaluate(&rows([0.1, 0.2, 0.9, 0.8]), 0.1);
        let bad = evaluate(&rows([0.9, 0.8, 0.1, 0.2]), 0.1);
        let flat = random_router(&rows([0.0; 4]), 0.1);
        let no_gap = evaluate(&[row(0.5, 1.0, 1.0)], 0.1);
        assert_eq!(median_apgr([&good, &bad, &flat, &no_gap]), flat.apgr);
        let (g, b) = (good.apgr.unwrap_or(0.0), bad.apgr.unwrap_or(0.0));
        assert!(close(median_apgr([&good, &bad]), (g + b) / 2.0));
        assert_eq!(median_apgr([&no_gap]), None);
    }

    #[test]
    fn the_chart_is_an_svg_with_one_line_per_router() {
        let data = rows([0.1, 0.2, 0.9, 0.8]);
        let (a, b) = (evaluate(&data, 0.1), random_router(&data, 0.1));
        let svg = chart_svg("t <1>", &[("tollgate", &a), ("random", &b)]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
    }
}

//! A small SVG line chart: the routing-quality chart of `tollgate eval` and
//! the cumulative-cost chart of `tollgate simulate` are both drawn by it.
//! Plain SVG text, no dependencies: it opens in any browser and diffs well.

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Written as the polyline's `data-series` attribute.
    pub name: String,
    /// The legend's text.
    pub legend: String,
    /// In data coordinates, drawn in order.
    pub points: Vec<(f64, f64)>,
}

/// A labelled horizontal reference line (dashed), e.g. a model's quality.
#[derive(Clone, Debug, PartialEq)]
pub struct Guide {
    pub y: f64,
    pub label: String,
}

/// Everything a chart shows; [`LineChart::to_svg`] draws it.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: Option<String>,
    /// Data ranges the plot area spans.
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Tick positions (data coordinates) and their labels.
    pub x_ticks: Vec<(f64, String)>,
    pub y_ticks: Vec<(f64, String)>,
    pub guides: Vec<Guide>,
    pub series: Vec<Series>,
    /// Room right of the plot, for guide labels.
    pub right_margin: f64,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e"];

impl LineChart {
    pub fn to_svg(&self) -> String {
        let (xa, xb) = self.x_range;
        let (ya, yb) = self.y_range;
        let x_span = if xb > xa { xb - xa } else { 1.0 };
        let y_span = if yb > ya { yb - ya } else { 1.0 };
        let x = |v: f64| LEFT + (v - xa) / x_span * (WIDTH - LEFT - self.right_margin);
        let y = |v: f64| TOP + (yb - v) / y_span * (HEIGHT - TOP - BOTTOM);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{LEFT}\" y=\"22\" font-size=\"14\">{}</text>\n",
            escape(&self.title)
        );
        let (x0, x1, y0, y1) = (x(xa), x(xb), y(ya), y(yb));
        svg += &format!(
            "<path d=\"M{x0:.1},{y1:.1} L{x0:.1},{y0:.1} L{x1:.1},{y0:.1}\" stroke=\"black\" fill=\"none\"/>\n"
        );
        for (v, label) in &self.x_ticks {
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                x(*v),
                y0 + 16.0,
                escape(label)
            );
        }
        for (v, label) in &self.y_ticks {
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                x0 - 6.0,
                y(*v) + 4.0,
                escape(label)
            );
        }
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            (x0 + x1) / 2.0,
            HEIGHT - 12.0,
            escape(&self.x_label)
        );
        if let Some(label) = &self.y_label {
            svg += &format!(
                "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                (y0 + y1) / 2.0,
                escape(label)
            );
        }
        for guide in &self.guides {
            svg += &format!(
                "<line x1=\"{x0:.1}\" x2=\"{x1:.1}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#bbb\" stroke-dasharray=\"4 3\"/>\n\
                 <text x=\"{1:.1}\" y=\"{2:.1}\" fill=\"#888\">{3}</text>\n",
                y(guide.y),
                x1 + 6.0,
                y(guide.y) + 4.0,
                escape(&guide.label)
            );
        }
        for (k, series) in self.series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<String> = series.points.iter().map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b))).collect();
            svg += &format!(
                "<polyline data-series=\"{}\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n",
                escape(&series.name),
                points.join(" ")
            );
            let ly = TOP + 20.0 + 18.0 * k as f64;
            svg += &format!(
                "<line x1=\"{0:.1}\" x2=\"{1:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>\n\
                 <text x=\"{2:.1}\" y=\"{3:.1}\">{4}</text>\n",
                x0 + 10.0,
                x0 + 30.0,
                x0 + 36.0,
                ly + 4.0,
                escape(&series.legend)
            );
        }
        svg += "</svg>\n";
        svg
    }
}

/// Text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_chart_has_a_polyline_per_series_and_escapes_what_it_writes() {
        let chart = LineChart {
            title: "a <b>".into(),
            x_label: "x".into(),
            y_label: None,
            x_range: (0.0, 2.0),
            y_range: (0.0, 1.0),
            x_ticks: vec![(0.0, "0".into())],
            y_ticks: vec![(1.0, "1".into())],
            guides: vec![Guide { y: 0.5, label: "half".into() }],
            series: vec![
                Series { name: "one".into(), legend: "one \"1\"".into(), points: vec![(0.0, 0.0), (2.0, 1.0)] },
                Series { name: "two".into(), legend: "two".into(), points: vec![(0.0, 1.0)] },
            ],
            right_margin: 20.0,
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg xmlns") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("one &quot;1&quot;"));
        // The last point of `one` is the plot's top-right corner.
        assert!(svg.contains("points=\"80.0,370.0 620.0,40.0\""), "{svg}");
    }
}

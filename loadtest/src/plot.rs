//! SVG latency plots (plotters, SVG backend): latency against percentile, the
//! percentile axis stretched toward the tail (x = -log10(1 - p)) as HdrHistogram's
//! own plots do, one line per run.

use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// Percentiles plotted: 0 to 99.99 in steps that thicken toward the tail.
fn quantiles() -> Vec<f64> {
    let mut q = Vec::new();
    let mut x = 0.0;
    while x <= 4.0 + 1e-9 {
        q.push(1.0 - 10f64.powf(-x));
        x += 0.02;
    }
    q
}

/// The points of one line: (x = -log10(1 - p), latency ms).
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    quantiles()
        .into_iter()
        .map(|p| {
            let x = -(1.0 - p).max(1e-12).log10();
            (x, h.value_at_quantile(p) as f64 / 1000.0)
        })
        .collect()
}

/// Writes `series` (label, histogram of µs) as one SVG plot to `path`.
pub fn latency_svg(
    path: &Path,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> Result<(), String> {
    let curves: Vec<(String, Vec<(f64, f64)>)> =
        series.iter().map(|(l, h)| (l.clone(), curve(h))).collect();
    let ymax = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.1f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..4f64, 0f64..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(5)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            if p < 99.0 {
                format!("{p:.0}%")
            } else {
                format!("{p:.2}%")
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (label, c)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(c, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_rises_and_svg_is_written() {
        let mut h = crate::report::new_histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let c = curve(&h);
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1), "monotone");
        assert!((c[0].1 - 0.001).abs() < 0.01);
        let dir = std::env::temp_dir().join(format!("loadtest-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        latency_svg(&path, "test", &[("run".into(), &h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

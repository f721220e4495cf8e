//! The `eval stream --plot` figure: windowed perplexity and slots held against tokens seen, one
//! line per cache policy, as an SVG (text is written as SVG `<text>`, so no fonts are needed).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use sepchat_engine::stream_eval::{window_perplexity, StreamRun};

const SIZE: (u32, u32) = (1100, 900);
/// The slots panel draws at most this many points per line; more would only bloat the file.
const MAX_POINTS: usize = 4000;
/// Matplotlib's "tab10" colours: distinct on white, unlike plotters' palette, whose third is yellow.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws both panels into `path`; `window` is the perplexity window in tokens.
pub fn write_plot(path: &Path, runs: &[StreamRun], window: usize, title: &str) -> anyhow::Result<()> {
    draw(path, runs, window, title).with_context(|| format!("cannot write the plot {}", path.display()))
}

fn draw(path: &Path, runs: &[StreamRun], window: usize, title: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2 - 20);
    let max_tokens = runs.iter().map(|run| run.tokens).max().unwrap_or(0).max(1) as f64;

    let windows: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|run| {
            window_perplexity(&run.nll, window)
                .into_iter()
                .filter(|checkpoint| checkpoint.ppl.is_finite())
                .map(|checkpoint| (checkpoint.tokens as f64, checkpoint.ppl))
                .collect()
        })
        .collect();
    let (ppl_low, ppl_high) = bounds(windows.iter().flatten().map(|&(_, ppl)| ppl));
    let mut chart = ChartBuilder::on(&upper)
        .caption(format!("perplexity per {window}-token window"), ("sans-serif", 16))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_tokens, ppl_low..with_legend_room(ppl_low, ppl_high))?;
    chart
        .configure_mesh()
        .x_desc("tokens seen")
        .y_desc("perplexity")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (index, (run, points)) in runs.iter().zip(&windows).enumerate() {
        let color = COLORS[index % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(legend_label(&run.policy))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let peak = runs.iter().map(|run| run.peak_slots).max().unwrap_or(0).max(1) as f64;
    let mut chart = ChartBuilder::on(&lower)
        .caption("KV slots attention saw at each step", ("sans-serif", 16))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_tokens, 0f64..with_legend_room(0.0, peak))?;
    chart
        .configure_mesh()
        .x_desc("tokens seen")
        .y_desc("slots")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (index, run) in runs.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let stride = run.slots.len().div_ceil(MAX_POINTS).max(1);
        let points =
            run.slots.iter().enumerate().step_by(stride).map(|(step, &slots)| ((step + 1) as f64, f64::from(slots)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(legend_label(&run.policy))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// plotters sizes the legend box at 0.7 em per character, but common sans-serif fonts (DejaVu
/// Sans) run wider on text like `sep:a=4,s=64,...`; trailing spaces widen the box and render as
/// nothing.
fn legend_label(policy: &str) -> String {
    format!("{policy}{}", " ".repeat(policy.len() / 8 + 2))
}

/// The top of a y range that leaves the upper part of the panel empty for the legend, so it
/// never hides the lines (whatever their shape, the data stays below this).
fn with_legend_room(low: f64, high: f64) -> f64 {
    high + (high - low) * 0.45
}

/// A y range with some room around the values (a fixed one when there are none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| (low.min(v), high.max(v)));
    if !low.is_finite() || !high.is_finite() {
        return (0.0, 1.0);
    }
    let margin = ((high - low) * 0.08).max(0.5);
    ((low - margin).max(0.0), high + margin)
}

//! The scale chart: ControllerExpandVolume latency (p50) and the
//! controller's resident memory against the number of volumes it knows, one
//! line per backend, drawn with `plotters` into a PNG. Text is drawn from a
//! TrueType font of the system (Debian's fonts-dejavu-core).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::step::{BenchResult, at};

/// Where Debian's fonts-dejavu-core puts its sans-serif face.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One backend's points: (volumes, expand p50 in ms, RSS in MiB).
pub(crate) type Series = (&'static str, Vec<(usize, f64, f64)>);

fn load_font() -> BenchResult<()> {
    let bytes = std::fs::read(FONT).map_err(at(format!("read {FONT} (Debian package fonts-dejavu-core)")))?;
    // plotters keeps registered fonts for the life of the process.
    register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).map_err(|_| format!("{FONT} is not a font plotters can read"))
}

/// Draws `series` into `path` (PNG, 1200 × 500): expand latency on the
/// left, RSS on the right, volumes on a logarithmic axis.
pub(crate) fn draw(path: &Path, title: &str, series: &[Series]) -> BenchResult<()> {
    load_font()?;
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(at("fill the chart"))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(at("title the chart"))?;
    let panels = root.split_evenly((1, 2));
    let max_volumes = series.iter().flat_map(|(_, p)| p.iter().map(|(v, _, _)| *v)).max().unwrap_or(10_000).max(1_000) as f64;
    let colours = [BLUE, RED, GREEN, MAGENTA];
    for (panel, (caption, unit, pick)) in panels.iter().zip([("ControllerExpandVolume p50", "ms", 0usize), ("swell-controller RSS after the calls", "MiB", 1)])
    {
        let top = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, e, r)| if pick == 0 { e } else { r })).fold(1.0f64, f64::max) * 1.25;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((50f64..max_volumes * 2.0).log_scale(), 0f64..top)
            .map_err(at("build the chart"))?;
        chart
            .configure_mesh()
            .x_desc("volumes known to the controller")
            .y_desc(unit)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(at("draw the mesh"))?;
        for ((name, points), colour) in series.iter().zip(colours.iter()) {
            let line: Vec<(f64, f64)> = points.iter().map(|&(v, e, r)| (v as f64, if pick == 0 { e } else { r })).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
                .map_err(at("draw a line"))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(at("draw points"))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(at("draw the legend"))?;
    }
    root.present().map_err(at(format!("write {}", path.display())))
}

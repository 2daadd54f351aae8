//! Samples and what the bench makes of them: medians and p99s, tables of a
//! figure beside its reference with their ratio, goals met or missed, all
//! rendered as Markdown (tables by `tabled`).

use std::fmt::Write as _;
use std::time::Duration;

use tabled::builder::Builder;
use tabled::settings::Style;

/// Durations measured for one thing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples(pub Vec<Duration>);

impl Samples {
    /// Adds one.
    pub(crate) fn push(&mut self, took: Duration) {
        self.0.push(took);
    }

    /// How many.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted
    }

    /// The median (upper of an even count); zero when empty.
    pub(crate) fn p50(&self) -> Duration {
        let sorted = self.sorted();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }

    /// The 99th percentile by nearest rank (with 30 samples: the largest).
    pub(crate) fn p99(&self) -> Duration {
        let sorted = self.sorted();
        let rank = (sorted.len() * 99).div_ceil(100);
        sorted.get(rank.saturating_sub(1)).copied().unwrap_or_default()
    }
}

/// Milliseconds, as the tables print them.
pub(crate) fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 { format!("{ms:.2} ms") } else { format!("{ms:.1} ms") }
}

/// MiB, as the tables print them.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// `a / b` of two medians, printed.
pub(crate) fn ratio(a: Duration, b: Duration) -> String {
    quotient(a.as_secs_f64(), b.as_secs_f64())
}

/// `a / b`, printed as a ratio.
pub(crate) fn quotient(a: f64, b: f64) -> String {
    if b == 0.0 { "n/a".into() } else { format!("{:.2}×", a / b) }
}

/// A goal the benchmark sets, judged on this run's numbers.
#[derive(Debug, Clone)]
pub(crate) struct Goal {
    /// What was asked.
    pub goal: String,
    /// What this run measured.
    pub measured: String,
    /// Whether it holds.
    pub met: bool,
}

/// One table of a section.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// Its heading.
    pub title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

impl Table {
    /// An empty table with these columns.
    pub(crate) fn new(title: impl Into<String>, header: &[&str]) -> Self {
        Table { title: title.into(), header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new(), notes: Vec::new() }
    }

    /// The standard columns of a figure beside its reference.
    pub(crate) fn versus(title: impl Into<String>) -> Self {
        Table::new(title, &["what", "p50", "p99", "runs", "× reference (p50)"])
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Adds a measured row of [`Table::versus`], with its ratio to `reference` (if any).
    pub(crate) fn measured(&mut self, what: impl Into<String>, samples: &Samples, reference: Option<&Samples>) {
        let times = reference.map_or_else(|| "reference".to_owned(), |r| ratio(samples.p50(), r.p50()));
        self.row(vec![what.into(), ms(samples.p50()), ms(samples.p99()), samples.len().to_string(), times]);
    }

    /// A note under the table.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as Markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut builder = Builder::default();
        builder.push_record(self.header.clone());
        for row in &self.rows {
            builder.push_record(row.clone());
        }
        let mut table = builder.build();
        table.with(Style::markdown());
        let mut out = format!("#### {}\n\n{table}\n", self.title);
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }
}

/// Everything one backend's run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    /// Its tables, in order.
    pub tables: Vec<Table>,
    /// The goals judged.
    pub goals: Vec<Goal>,
}

impl Report {
    /// Adds a table (and prints it at once, so a long run shows progress).
    pub(crate) fn add(&mut self, table: Table) {
        println!("{}", table.markdown());
        self.tables.push(table);
    }

    /// Judges a goal.
    pub(crate) fn goal(&mut self, goal: impl Into<String>, measured: impl Into<String>, met: bool) {
        self.goals.push(Goal { goal: goal.into(), measured: measured.into(), met });
    }

    /// The whole report as Markdown, goals last.
    pub(crate) fn markdown(&self, title: &str) -> String {
        let mut out = format!("### {title}\n\n");
        for table in &self.tables {
            out.push_str(&table.markdown());
            out.push('\n');
        }
        if !self.goals.is_empty() {
            let mut goals = Table::new("Goals", &["goal", "measured", "met"]);
            for goal in &self.goals {
                goals.row(vec![goal.goal.clone(), goal.measured.clone(), if goal.met { "yes".into() } else { "**no**".into() }]);
            }
            out.push_str(&goals.markdown());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_by_nearest_rank() {
        let samples = Samples((1..=30).map(Duration::from_millis).collect());
        assert_eq!(samples.p50(), Duration::from_millis(16));
        assert_eq!(samples.p99(), Duration::from_millis(30));
        let hundred = Samples((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(hundred.p99(), Duration::from_millis(99));
        assert_eq!(Samples::default().p99(), Duration::ZERO);
    }

    #[test]
    fn tables_render_as_markdown_with_ratios() {
        let reference = Samples(vec![Duration::from_millis(10); 3]);
        let swell = Samples(vec![Duration::from_millis(15); 3]);
        let mut table = Table::versus("expand");
        table.measured("librbd", &reference, None);
        table.measured("Swell", &swell, Some(&reference));
        let text = table.markdown();
        assert!(text.contains("| Swell") && text.contains("1.50×") && text.contains("|---"), "{text}");
    }
}

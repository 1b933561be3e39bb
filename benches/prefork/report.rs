//! Tables: every row gives the measured value, the baseline's value measured in the same run,
//! their ratio, the target and whether it is met.

use std::time::Duration;

pub struct Row {
    pub name: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    /// `None` when the row has no target.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(name: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            value: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            target: "-".to_string(),
            met: None,
        }
    }

    pub fn value(mut self, v: impl Into<String>) -> Row {
        self.value = v.into();
        self
    }

    pub fn baseline(mut self, v: impl Into<String>) -> Row {
        self.baseline = v.into();
        self
    }

    pub fn ratio(mut self, r: f64) -> Row {
        self.ratio = ratio(r);
        self
    }

    pub fn ratio_text(mut self, r: impl Into<String>) -> Row {
        self.ratio = r.into();
        self
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = target.into();
        self.met = Some(met);
        self
    }
}

pub struct Table {
    pub title: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn print(&self) {
        let header = ["measure", "prefork", "baseline", "ratio", "target", "met"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    r.value.clone(),
                    r.baseline.clone(),
                    r.ratio.clone(),
                    r.target.clone(),
                    match r.met {
                        Some(true) => "yes".to_string(),
                        Some(false) => "NO".to_string(),
                        None => "-".to_string(),
                    },
                ]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: [&str; 6]| {
            let mut out = String::new();
            for (i, (c, w)) in cols.iter().zip(width).enumerate() {
                let pad = w - c.chars().count();
                // Names left-aligned, figures right-aligned.
                if i == 0 {
                    out.push_str(c);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(c);
                }
                out.push_str(if i + 1 < cols.len() { " | " } else { "" });
            }
            println!("| {out} |");
        };
        let total: usize = width.iter().sum::<usize>() + 3 * (width.len() - 1) + 4;
        println!();
        println!("{}", self.title);
        println!("{}", "=".repeat(self.title.chars().count()));
        line(header);
        println!("|{}|", "-".repeat(total - 2));
        for row in &cells {
            line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
        }
        for note in &self.notes {
            println!("  * {note}");
        }
    }
}

/// A ratio, with three decimals near 1 so that a target at 1.00x reads unambiguously.
pub fn ratio(r: f64) -> String {
    if !r.is_finite() {
        "inf".to_string()
    } else if r < 10.0 {
        format!("{r:.3}x")
    } else {
        format!("{r:.1}x")
    }
}

/// Ratios, one per round, as `0.912x 1.034x ...`.
pub fn ratios(values: &[f64]) -> String {
    values
        .iter()
        .map(|r| ratio(*r))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} us", ms * 1e3)
    } else if ms < 100.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn rate(per_sec: f64) -> String {
    if per_sec >= 10_000.0 {
        format!("{:.0}", per_sec)
    } else {
        format!("{:.1}", per_sec)
    }
}

/// The median of `values` (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN left"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median_duration(values: &[Duration]) -> Duration {
    let secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    let m = median(&secs);
    if m.is_finite() {
        Duration::from_secs_f64(m)
    } else {
        Duration::ZERO
    }
}

//! The result table, the budget checks and the JSON file.

use std::fmt::Write;

use serde_json::{json, Value};

/// A budget line of issue 4, checked on medians.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// Coordinator / direct at least this.
    RatioAtLeast(f64),
    /// Coordinator / direct at most this.
    RatioAtMost(f64),
    /// Coordinator figure strictly under this.
    Under(f64),
    /// Coordinator figure at most this.
    AtMost(f64),
}

impl Budget {
    fn text(self, unit: &str) -> String {
        match self {
            Budget::RatioAtLeast(r) => format!(">= {:.0}% of direct", r * 100.0),
            Budget::RatioAtMost(r) => format!("<= {r}x direct"),
            Budget::Under(v) => format!("< {} {unit}", number(v)),
            Budget::AtMost(v) => format!("<= {} {unit}", number(v)),
        }
    }

    fn holds(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Budget::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Budget::RatioAtMost(r) => ratio.map(|x| x <= r),
            Budget::Under(v) => Some(value < v),
            Budget::AtMost(v) => Some(value <= v),
        }
        .filter(|_| value.is_finite())
    }
}

/// One figure: its value in each run through the coordinator, and direct when measured.
#[derive(Clone, Debug)]
pub struct Row {
    /// Scenario label, e.g. `1 submit`.
    pub scenario: String,
    /// What is measured.
    pub figure: String,
    /// Unit.
    pub unit: String,
    /// One value per run, through the coordinator.
    pub pool: Vec<f64>,
    /// One value per run, straight to one fake worker.
    pub direct: Option<Vec<f64>>,
    /// The budget line it is checked against.
    pub budget: Option<Budget>,
    /// Errors in the runs of this figure (a run with errors is not a result).
    pub errors: u64,
}

impl Row {
    /// A figure measured through the coordinator only.
    pub fn pool(scenario: &str, figure: &str, unit: &str, values: Vec<f64>) -> Row {
        Row {
            scenario: scenario.to_string(),
            figure: figure.to_string(),
            unit: unit.to_string(),
            pool: values,
            direct: None,
            budget: None,
            errors: 0,
        }
    }

    /// Adds the direct values.
    pub fn direct(mut self, values: Vec<f64>) -> Row {
        self.direct = Some(values);
        self
    }

    /// Adds a budget line.
    pub fn budget(mut self, budget: Budget) -> Row {
        self.budget = Some(budget);
        self
    }

    /// Sets the error count.
    pub fn errors(mut self, errors: u64) -> Row {
        self.errors = errors;
        self
    }

    fn ratio(&self) -> Option<f64> {
        let direct = median(self.direct.as_ref()?);
        Some(median(&self.pool) / direct).filter(|r| r.is_finite())
    }

    fn check(&self) -> String {
        let Some(budget) = self.budget else {
            return String::new();
        };
        if self.errors > 0 {
            return "MISS (errors)".to_string();
        }
        match budget.holds(median(&self.pool), self.ratio()) {
            Some(true) => "PASS".to_string(),
            Some(false) => "MISS".to_string(),
            None => "n/a".to_string(),
        }
    }
}

/// The median of some values (NaN when there are none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn number(v: f64) -> String {
    if !v.is_finite() {
        "-".to_string()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn spread(values: &[f64]) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return "-".to_string();
    }
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{} [{}-{}]",
        number(median(values)),
        number(min),
        number(max)
    )
}

/// Prints the table and returns it as text.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "figure",
        "unit",
        "coordinator median [min-max]",
        "direct median [min-max]",
        "ratio",
        "budget",
        "check",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let mut check = r.check();
            if r.errors > 0 && r.budget.is_none() {
                check = format!("{} errors", r.errors);
            } else if r.errors > 0 {
                check = format!("{check}, {} errors", r.errors);
            }
            [
                r.scenario.clone(),
                r.figure.clone(),
                r.unit.clone(),
                spread(&r.pool),
                r.direct.as_deref().map_or_else(|| "-".to_string(), spread),
                r.ratio()
                    .map_or_else(|| "-".to_string(), |x| format!("{x:.2}")),
                r.budget.map(|b| b.text(&r.unit)).unwrap_or_default(),
                check,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        let mut text = String::new();
        for (c, w) in row.iter().zip(widths) {
            let _ = write!(text, "| {c:<w$} ");
        }
        let _ = writeln!(out, "{text}|");
    };
    line(&mut out, &header.map(str::to_string));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for row in &cells {
        line(&mut out, row);
    }
    out
}

/// The rows as JSON.
pub fn rows_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario,
                    "figure": r.figure,
                    "unit": r.unit,
                    "coordinator_runs": finite(&r.pool),
                    "coordinator_median": finite_one(median(&r.pool)),
                    "direct_runs": r.direct.as_deref().map(finite),
                    "direct_median": r.direct.as_deref().map(|d| finite_one(median(d))),
                    "ratio": r.ratio(),
                    "budget": r.budget.map(|b| b.text(&r.unit)),
                    "check": r.check(),
                    "errors": r.errors,
                })
            })
            .collect(),
    )
}

fn finite_one(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn finite(values: &[f64]) -> Value {
    Value::Array(values.iter().map(|v| finite_one(*v)).collect())
}

//! Results: per-connection histograms merged at the end, printed as a percentile table,
//! one JSON object, or the full HdrHistogram percentile distribution (`.hgrm`).

use std::fmt::Write as _;
use std::io::Write as _;

use hdrhistogram::Histogram;

/// Values are microseconds, up to one minute, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// What one connection measured.
#[derive(Debug)]
pub struct Measured {
    pub latency: Histogram<u64>,
    /// contended: release sent -> next holder's grant received.
    pub hand_off: Histogram<u64>,
    /// Requests answered with an error, by code name.
    pub errors: Vec<(String, u64)>,
    /// scheduler: jobs done (locks acquired and released).
    pub jobs: u64,
    /// Requests sent in the measured window (open loop: compared with the offered rate).
    pub sent: u64,
}

impl Measured {
    pub fn new() -> Measured {
        Measured {
            latency: histogram(),
            hand_off: histogram(),
            errors: Vec::new(),
            jobs: 0,
            sent: 0,
        }
    }

    pub fn error(&mut self, name: String) {
        match self.errors.iter_mut().find(|(known, _)| *known == name) {
            Some((_, count)) => *count += 1,
            None => self.errors.push((name, 1)),
        }
    }

    pub fn merge(&mut self, other: Measured) {
        self.latency.add(other.latency).expect("same bounds");
        self.hand_off.add(other.hand_off).expect("same bounds");
        for (name, count) in other.errors {
            for _ in 0..count {
                self.error(name.clone());
            }
        }
        self.jobs += other.jobs;
        self.sent += other.sent;
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().map(|(_, count)| count).sum()
    }
}

/// The settings a report names.
#[derive(Debug)]
pub struct Settings {
    pub workload: &'static str,
    pub mode: &'static str,
    pub target: String,
    pub durability: &'static str,
    pub connections: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub duration: f64,
}

const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p999", 0.999),
    ("p9999", 0.9999),
];

pub fn print(settings: &Settings, measured: &Measured, json: bool) {
    let ops = measured.latency.len();
    let ops_per_sec = ops as f64 / settings.duration;
    if json {
        let mut line = format!(
            "{{\"workload\":\"{}\",\"mode\":\"{}\",\"target\":\"{}\",\"durability\":\"{}\",\"connections\":{},\"pipeline\":{},\"ops\":{ops},\"errors\":{},\"ops_per_sec\":{ops_per_sec:.0}",
            settings.workload,
            settings.mode,
            settings.target,
            settings.durability,
            settings.connections,
            settings.pipeline,
            measured.error_total()
        );
        if let Some(rate) = settings.rate {
            let _ = write!(
                line,
                ",\"offered_per_sec\":{rate:.0},\"achieved_per_sec\":{:.0}",
                measured.sent as f64 / settings.duration
            );
        }
        for (name, quantile) in QUANTILES {
            let _ = write!(
                line,
                ",\"{name}_us\":{}",
                measured.latency.value_at_quantile(quantile)
            );
        }
        let _ = write!(line, ",\"max_us\":{}", measured.latency.max());
        if !measured.hand_off.is_empty() {
            let _ = write!(
                line,
                ",\"handoff_p50_us\":{},\"handoff_p99_us\":{},\"handoff_max_us\":{}",
                measured.hand_off.value_at_quantile(0.5),
                measured.hand_off.value_at_quantile(0.99),
                measured.hand_off.max()
            );
        }
        if measured.jobs > 0 {
            let _ = write!(
                line,
                ",\"jobs_per_sec\":{:.0}",
                measured.jobs as f64 / settings.duration
            );
        }
        let errors: Vec<String> = measured
            .errors
            .iter()
            .map(|(name, count)| format!("\"{name}\":{count}"))
            .collect();
        let _ = write!(line, ",\"errors_by_kind\":{{{}}}}}", errors.join(","));
        println!("{line}");
        return;
    }
    println!(
        "workload={} mode={} target={} durability={} connections={} pipeline={}{} duration_s={}",
        settings.workload,
        settings.mode,
        settings.target,
        settings.durability,
        settings.connections,
        settings.pipeline,
        settings
            .rate
            .map(|rate| format!(" offered_per_sec={rate:.0}"))
            .unwrap_or_default(),
        settings.duration
    );
    println!(
        "ops={ops} ops_per_sec={ops_per_sec:.0} errors={}",
        measured.error_total()
    );
    if settings.rate.is_some() {
        println!(
            "achieved_per_sec={:.0}",
            measured.sent as f64 / settings.duration
        );
    }
    for (name, count) in &measured.errors {
        println!("  error {name}: {count}");
    }
    print_table("latency (µs)", &measured.latency);
    if !measured.hand_off.is_empty() {
        print_table(
            "hand-off: release sent -> next grant received (µs)",
            &measured.hand_off,
        );
    }
    if measured.jobs > 0 {
        println!(
            "jobs={} jobs_per_sec={:.0}",
            measured.jobs,
            measured.jobs as f64 / settings.duration
        );
    }
}

fn print_table(title: &str, histogram: &Histogram<u64>) {
    println!("{title}");
    println!(
        "  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    let values: Vec<String> = QUANTILES
        .iter()
        .map(|&(_, quantile)| histogram.value_at_quantile(quantile).to_string())
        .collect();
    println!(
        "  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        values[0],
        values[1],
        values[2],
        values[3],
        values[4],
        histogram.max()
    );
}

/// Writes the percentile distribution in HdrHistogram's `.hgrm` text layout.
pub fn write_hgrm(path: &std::path::Path, histogram: &Histogram<u64>) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        file,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for value in histogram.iter_quantiles(5) {
        let quantile = value.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            1.0 / (1.0 - quantile)
        } else {
            f64::INFINITY
        };
        writeln!(
            file,
            "{:>12.3} {:>14.12} {:>10} {:>14.2}",
            value.value_iterated_to() as f64,
            quantile,
            value.count_since_last_iteration(),
            inverse
        )?;
    }
    writeln!(
        file,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.mean(),
        histogram.stdev(),
        histogram.max() as f64,
        histogram.len()
    )?;
    file.flush()
}

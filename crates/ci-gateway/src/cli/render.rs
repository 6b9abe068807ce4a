//! Human output: coloured statuses, tables, a spinner.
//!
//! Colour is on only when the stream written to is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>). The spinner draws only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use super::client::{Job, Run};

/// Whether to colour what goes to one stream.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    /// Write ANSI colour codes.
    enabled: bool,
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl Palette {
    /// For text written to stdout.
    pub fn stdout() -> Palette {
        Palette {
            enabled: std::io::stdout().is_terminal() && !no_color(),
        }
    }

    /// For text written to stderr.
    pub fn stderr() -> Palette {
        Palette {
            enabled: std::io::stderr().is_terminal() && !no_color(),
        }
    }

    /// `text` (already padded) in the colour of `status`.
    pub fn status(self, status: &str, text: &str) -> String {
        if !self.enabled {
            return text.to_owned();
        }
        let code = match status {
            "succeeded" => "32",          // green
            "failed" | "errored" => "31", // red
            "canceled" => "33",           // yellow
            "running" => "36",            // cyan
            "queued" | "unknown" => "2",  // dim
            _ => "0",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// A spinner on stderr while a run waits; draws nothing unless stderr is a terminal.
pub struct Spinner {
    /// The drawing task; `None` when not spinning.
    task: Option<JoinHandle<()>>,
}

impl Spinner {
    /// A spinner that is not spinning.
    pub fn idle() -> Spinner {
        Spinner { task: None }
    }

    /// Starts spinning with `message`, unless already spinning or stderr is not a terminal.
    pub fn start(&mut self, message: String) {
        if self.task.is_some() || !std::io::stderr().is_terminal() {
            return;
        }
        self.task = Some(tokio::spawn(async move {
            const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for frame in FRAMES.iter().cycle() {
                tick.tick().await;
                // One write per frame, with no await in between: aborting the task never
                // leaves half a frame.
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{frame} {message}");
                let _ = err.flush();
            }
        }));
    }

    /// Stops spinning and clears its line.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `value` for a table cell: strings bare, everything else as compact JSON.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A run as `key: value` lines.
pub fn run_details(run: &Run, palette: Palette) -> String {
    let parameters = if run.parameters.is_empty() {
        "-".to_owned()
    } else {
        run.parameters
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let or_dash = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".to_owned());
    format!(
        "run_id:      {}\n\
         job_id:      {}\n\
         status:      {}\n\
         created_at:  {}\n\
         started_at:  {}\n\
         finished_at: {}\n\
         parameters:  {parameters}",
        run.run_id,
        run.job_id,
        palette.status(&run.status, &run.status),
        run.created_at,
        or_dash(&run.started_at),
        or_dash(&run.finished_at),
    )
}

/// Rows as a table with a header, columns padded to their widest cell. `colour` may colour a
/// padded cell (column, row index, padded text).
fn table(
    header: &[&str],
    rows: &[Vec<String>],
    colour: impl Fn(usize, usize, &str) -> String,
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .into_iter()
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let pad = |text: &str, width: usize| format!("{text:<width$}");
    let mut out = vec![line(
        header
            .iter()
            .zip(&widths)
            .map(|(h, w)| pad(h, *w))
            .collect(),
    )];
    for (r, row) in rows.iter().enumerate() {
        out.push(line(
            row.iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, w))| colour(c, r, &pad(cell, *w)))
                .collect(),
        ));
    }
    out.join("\n")
}

/// Jobs as a table.
pub fn jobs_table(jobs: &[Job]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.job_id.clone(),
                j.project.clone(),
                j.environment.clone().unwrap_or_else(|| "-".to_owned()),
                j.display_name.clone(),
            ]
        })
        .collect();
    table(
        &["JOB ID", "PROJECT", "ENVIRONMENT", "NAME"],
        &rows,
        |_, _, t| t.to_owned(),
    )
}

/// Runs as a table, statuses coloured.
pub fn runs_table(runs: &[Run], palette: Palette) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.job_id.clone(),
                r.status.clone(),
                r.created_at.clone(),
                r.finished_at.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        &["RUN ID", "JOB", "STATUS", "CREATED", "FINISHED"],
        &rows,
        |c, r, t| {
            if c == 2 {
                palette.status(&runs[r].status, t)
            } else {
                t.to_owned()
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let jobs = vec![
            Job {
                job_id: "job_a".into(),
                project: "payments".into(),
                display_name: "Build".into(),
                environment: None,
            },
            Job {
                job_id: "job_longer".into(),
                project: "p".into(),
                display_name: "Deploy".into(),
                environment: Some("prod".into()),
            },
        ];
        assert_eq!(
            jobs_table(&jobs),
            "JOB ID      PROJECT   ENVIRONMENT  NAME\n\
             job_a       payments  -            Build\n\
             job_longer  p         prod         Deploy"
        );
    }

    #[test]
    fn a_disabled_palette_writes_no_escape_codes() {
        let p = Palette { enabled: false };
        assert_eq!(p.status("failed", "failed "), "failed ");
        let p = Palette { enabled: true };
        assert_eq!(p.status("failed", "failed"), "\x1b[31mfailed\x1b[0m");
    }
}

//! The command-line client: `ci-gateway jobs …` and `ci-gateway runs …` against a running
//! gateway's v1 API.
//!
//! # Layout
//! - [`client`]: the HTTP client, one method per endpoint, and [`client::CliError`].
//! - [`follow`]: reads a run's event stream, reconnecting with `Last-Event-ID`.
//! - [`render`]: human output (colours, tables, the spinner).
//!
//! Human output by default; `--output json` prints one JSON document, or JSON lines (one per
//! event) when following. The exit codes are in [`exit`] and in `docs/cli.md`.

pub mod client;
pub mod follow;
pub mod render;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Url;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use self::client::{ApiClient, CliError, Fetched, Run, RunFilter};
use self::follow::{Ended, StreamEvent};
use self::render::{Palette, Spinner};

/// The process exit codes of the client commands.
pub mod exit {
    /// The command worked; when following, the run succeeded.
    pub const SUCCESS: u8 = 0;
    /// Bad command line (clap's own code), e.g. an unknown flag or a repeated `-p` key.
    pub const USAGE: u8 = 2;
    /// The API answered with an error, or the gateway could not be reached.
    pub const API: u8 = 3;
    /// Followed run failed.
    pub const FAILED: u8 = 10;
    /// Followed run errored (infrastructure or configuration).
    pub const ERRORED: u8 = 11;
    /// Followed run was canceled.
    pub const CANCELED: u8 = 12;
    /// Followed run ended in a status the gateway does not know.
    pub const UNKNOWN: u8 = 13;
    /// Interrupted (Ctrl-C) while following.
    pub const INTERRUPTED: u8 = 130;

    /// The exit code for a followed run's final status.
    pub fn for_status(status: &str) -> u8 {
        match status {
            "succeeded" => SUCCESS,
            "failed" => FAILED,
            "errored" => ERRORED,
            "canceled" => CANCELED,
            _ => UNKNOWN,
        }
    }
}

/// The exit codes, for `--help`.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success (when following: the run succeeded)
  2    usage error (bad flag, repeated -p key)
  3    API or network error (printed as `error: <message> (<code>)`)
  10   followed run failed
  11   followed run errored
  12   followed run was canceled
  13   followed run ended in an unknown status
  130  interrupted (Ctrl-C) while following

Environment: CI_GATEWAY_URL (--server), CI_GATEWAY_TOKEN (--token), NO_COLOR.";

/// The default `--server`: where `ci-gateway dev` listens.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people; colours on a terminal.
    Human,
    /// One JSON document; JSON lines (one per event) when following.
    Json,
}

/// How to reach the gateway, and how to print; accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The gateway's base URL.
    #[arg(long, env = "CI_GATEWAY_URL", default_value = DEFAULT_SERVER, global = true,
          value_parser = client::parse_server)]
    pub server: Url,
    /// Bearer token sent as `Authorization: Bearer …`; never printed.
    #[arg(long, env = "CI_GATEWAY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Human, global = true)]
    pub output: Output,
}

/// `ci-gateway jobs …`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct JobsArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// The `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List the jobs that can be triggered.
    List,
}

/// `ci-gateway runs …`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct RunsArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: RunsCommand,
}

/// Options of the commands that follow a run.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// On Ctrl-C, cancel the run before exiting (otherwise it keeps running).
    #[arg(long, requires = "follow")]
    pub cancel_on_interrupt: bool,
}

/// The `runs` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Trigger a run of JOB.
    #[command(after_help = EXIT_CODES_HELP)]
    Trigger {
        /// The job id (see `ci-gateway jobs list`).
        job: String,
        /// A parameter, `key=value`; the value is sent as a JSON string. Repeat for more
        /// parameters; a key may appear once.
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Makes retries safe: the same key and parameters return the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Stream status and logs until the run ends; the exit code tells how it ended.
        #[arg(long)]
        follow: bool,
        /// Only with --follow.
        #[command(flatten)]
        follow_args: FollowArgs,
    },
    /// Show a run.
    Get {
        /// The run id.
        run: String,
    },
    /// Print a run's log: stdout lines to stdout, stderr lines to stderr.
    ///
    /// Without --follow, prints what the gateway has stored and exits 0 (for a run in progress,
    /// once the stream has been quiet for a second).
    #[command(after_help = EXIT_CODES_HELP)]
    Logs {
        /// The run id.
        run: String,
        /// Keep streaming until the run ends; the exit code tells how it ended.
        #[arg(long)]
        follow: bool,
        /// Only with --follow.
        #[command(flatten)]
        follow_args: FollowArgs,
    },
    /// Ask the gateway to cancel a run.
    Cancel {
        /// The run id.
        run: String,
    },
    /// List runs, newest first.
    List {
        /// Only runs of this job.
        #[arg(long)]
        job: Option<String>,
        /// Only runs in this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many runs.
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// Parses `-p key=value`.
fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// The parameters object; a key given twice is an error naming it.
fn parameters(params: Vec<(String, String)>) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for (k, v) in params {
        if map.contains_key(&k) {
            return Err(format!("parameter `{k}` is given more than once"));
        }
        map.insert(k, Value::String(v));
    }
    Ok(map)
}

/// What a command prints to stdout: the JSON body or the human text.
fn emit<T>(output: Output, fetched: &Fetched<T>, human: impl FnOnce(&T) -> String) {
    let text = match output {
        Output::Json => fetched.body.to_string(),
        Output::Human => human(&fetched.value),
    };
    if !text.is_empty() {
        out(text);
    }
}

/// Writes a line to stdout and flushes it; a closed stdout (`| head`) is not worth a panic.
fn out(line: impl std::fmt::Display) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Prints an error the standard way and returns [`exit::API`].
fn fail(e: &CliError) -> u8 {
    eprintln!("error: {} ({})", e.message(), e.code());
    exit::API
}

fn connect(args: ClientArgs) -> Result<(ApiClient, Output), u8> {
    let token = args.token.filter(|t| !t.is_empty()).map(SecretString::from);
    match ApiClient::new(args.server, token) {
        Ok(client) => Ok((client, args.output)),
        Err(message) => {
            eprintln!("error: {message}");
            Err(exit::USAGE)
        }
    }
}

/// Runs `ci-gateway jobs …`.
pub async fn jobs(args: JobsArgs) -> ExitCode {
    let (client, output) = match connect(args.client) {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    let code = match args.command {
        JobsCommand::List => match client.list_jobs().await {
            Ok(jobs) => {
                emit(output, &jobs, |j| render::jobs_table(j));
                exit::SUCCESS
            }
            Err(e) => fail(&e),
        },
    };
    ExitCode::from(code)
}

/// Runs `ci-gateway runs …`.
pub async fn runs(args: RunsArgs) -> ExitCode {
    let (client, output) = match connect(args.client) {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    ExitCode::from(runs_command(&client, output, args.command).await)
}

async fn runs_command(client: &ApiClient, output: Output, command: RunsCommand) -> u8 {
    let details = |run: &Run| render::run_details(run, Palette::stdout());
    match command {
        RunsCommand::Trigger {
            job,
            params,
            idempotency_key,
            follow,
            follow_args,
        } => {
            let parameters = match parameters(params) {
                Ok(p) => p,
                Err(message) => {
                    eprintln!("error: {message}");
                    return exit::USAGE;
                }
            };
            let run = match client
                .trigger(&job, parameters, idempotency_key.as_deref())
                .await
            {
                Ok(run) => run,
                Err(e) => return fail(&e),
            };
            if !follow {
                emit(output, &run, details);
                return exit::SUCCESS;
            }
            match output {
                Output::Json => {
                    out(json!({ "event": "run", "data": run.body["run"] }));
                }
                Output::Human => eprintln!(
                    "run {} of {} {}",
                    run.value.run_id,
                    run.value.job_id,
                    Palette::stderr().status(&run.value.status, &run.value.status)
                ),
            }
            follow_run(client, output, &run.value.run_id, &follow_args).await
        }
        RunsCommand::Get { run } => match client.get_run(&run).await {
            Ok(run) => {
                emit(output, &run, details);
                exit::SUCCESS
            }
            Err(e) => fail(&e),
        },
        RunsCommand::Logs {
            run,
            follow,
            follow_args,
        } => {
            if follow {
                follow_run(client, output, &run, &follow_args).await
            } else {
                logs(client, output, &run).await
            }
        }
        RunsCommand::Cancel { run } => match client.cancel(&run).await {
            Ok(run) => {
                emit(output, &run, |r| {
                    format!("cancel requested for {}\n{}", r.run_id, details(r))
                });
                exit::SUCCESS
            }
            Err(e) => fail(&e),
        },
        RunsCommand::List {
            job,
            status,
            limit,
            cursor,
        } => {
            let filter = RunFilter {
                job_id: job,
                status,
                limit,
                cursor,
            };
            match client.list_runs(&filter).await {
                Ok(page) => {
                    emit(output, &page, |p| {
                        render::runs_table(&p.runs, Palette::stdout())
                    });
                    if let (Output::Human, Some(next)) = (output, &page.value.next_cursor) {
                        eprintln!("more: --cursor {next}");
                    }
                    exit::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

/// Prints one log line to stdout or stderr, as it came.
fn print_line(data: &Value) {
    let line = data["line"].as_str().unwrap_or_default();
    if data["stream"] == "stderr" {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    } else {
        out(line);
    }
}

/// `runs logs RUN` without `--follow`.
async fn logs(client: &ApiClient, output: Output, run_id: &str) -> u8 {
    // Events of a finished run arrive at once and end with `end`; for a run in progress, stop
    // once the stored ones have come and the stream goes quiet.
    const QUIET: Duration = Duration::from_secs(1);
    let mut events = Vec::new();
    let result = follow::follow(client, run_id, Some(QUIET), |e| match output {
        Output::Json => events.push(e.to_json()),
        Output::Human if e.event == "log" => print_line(&e.data),
        Output::Human => {}
    })
    .await;
    match result {
        Ok(_) => {
            if output == Output::Json {
                out(json!({ "run_id": run_id, "events": events }));
            }
            exit::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Prints followed events: JSON lines, or statuses (to stderr) and log lines.
struct Printer {
    output: Output,
    spinner: Spinner,
    palette: Palette,
}

impl Printer {
    fn event(&mut self, e: &StreamEvent) {
        if self.output == Output::Json {
            self.spinner.stop();
            out(e.to_json());
            return;
        }
        let status = e.data["status"].as_str().unwrap_or("unknown");
        match e.event.as_str() {
            "status" if status == "queued" => self.spinner.start("queued".to_owned()),
            // A final status: the end line says it, once.
            "status" if matches!(status, "succeeded" | "failed" | "canceled" | "errored") => {}
            "status" => {
                self.spinner.stop();
                eprintln!("status: {}", self.palette.status(status, status));
            }
            "log" => {
                self.spinner.stop();
                print_line(&e.data);
            }
            "end" => {
                self.spinner.stop();
                eprintln!("run {}", self.palette.status(status, status));
            }
            _ => {}
        }
    }
}

/// Follows a run to its end, or to Ctrl-C; returns the exit code.
async fn follow_run(client: &ApiClient, output: Output, run_id: &str, args: &FollowArgs) -> u8 {
    let mut printer = Printer {
        output,
        spinner: Spinner::idle(),
        palette: Palette::stderr(),
    };
    let ended = tokio::select! {
        // Listen for Ctrl-C from the start, before any output.
        biased;
        _ = tokio::signal::ctrl_c() => None,
        ended = follow::follow(client, run_id, None, |e| printer.event(e)) => Some(ended),
    };
    printer.spinner.stop();
    match ended {
        Some(Ok(Ended::Finished(status))) => exit::for_status(&status),
        // Only with an idle time, which following does not set.
        Some(Ok(Ended::Idle)) => exit::UNKNOWN,
        Some(Err(e)) => fail(&e),
        None if args.cancel_on_interrupt => match client.cancel(run_id).await {
            Ok(_) => {
                eprintln!("interrupted: cancel requested for run {run_id}");
                exit::INTERRUPTED
            }
            Err(e) => {
                eprintln!("interrupted: could not cancel run {run_id}");
                fail(&e);
                exit::INTERRUPTED
            }
        },
        None => {
            eprintln!(
                "interrupted: run {run_id} keeps running (`ci-gateway runs cancel {run_id}` stops it)"
            );
            exit::INTERRUPTED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_strings_and_a_repeated_key_is_an_error() {
        let ok = parameters(vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]);
        assert_eq!(
            Value::Object(ok.expect("ok")),
            json!({"a": "1", "b": "x=y"})
        );

        let twice = parameters(vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert_eq!(
            twice,
            Err("parameter `a` is given more than once".to_owned())
        );
    }

    #[test]
    fn a_parameter_needs_a_key_and_an_equals_sign() {
        assert_eq!(parse_param("k=v=w"), Ok(("k".into(), "v=w".into())));
        assert_eq!(parse_param("k="), Ok(("k".into(), String::new())));
        assert!(parse_param("=v").is_err());
        assert!(parse_param("kv").is_err());
    }

    #[test]
    fn each_final_status_has_its_own_exit_code() {
        let codes: Vec<u8> = ["succeeded", "failed", "errored", "canceled", "unknown", "?"]
            .into_iter()
            .map(exit::for_status)
            .collect();
        assert_eq!(codes, [0, 10, 11, 12, 13, 13]);
    }
}

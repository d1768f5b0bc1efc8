//! The CLI's commands.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Api;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Command-line client for the Kiln CI server"
)]
pub(crate) struct Cli {
    /// The api's base URL.
    #[arg(
        long,
        env = "KILN_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An api token (read for listings, write to apply and start).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The stream gateway's base URL (`ws://host:port`); `--follow` uses it when set.
    #[arg(long, env = "KILN_GATEWAY_URL", global = true)]
    gateway: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Jobs: apply definitions, list them.
    #[command(subcommand)]
    Job(JobCommand),
    /// Builds: start, rebuild, list, cancel, read logs, fetch artifacts.
    #[command(subcommand)]
    Build(BuildCommand),
    /// Secrets: set, list by name, delete.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Workers: list them, pause one for maintenance, resume it.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List live workers: id, queue, state, builds running / slots.
    List,
    /// Pause a worker: it finishes what it runs and takes nothing new (admin token).
    Pause { id: String },
    /// Resume a paused worker (admin token).
    Resume { id: String },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Set or replace a secret. The value is read from standard input (an argument would be
    /// visible to every user of the machine); one final newline is dropped.
    Set {
        name: String,
        /// A folder's secret: the jobs inside it get it before a global one.
        #[arg(long)]
        folder: Option<String>,
    },
    /// List secrets by name, with who set them when (values are never shown).
    List {
        #[arg(long)]
        folder: Option<String>,
    },
    /// Delete a secret.
    Delete {
        name: String,
        #[arg(long)]
        folder: Option<String>,
    },
}

/// The api path of the secrets, global or a folder's.
fn secrets_path(folder: Option<&str>) -> String {
    match folder {
        Some(f) => format!("/api/v1/folders/{f}/secrets"),
        None => "/api/v1/secrets".to_owned(),
    }
}

#[derive(Subcommand)]
enum JobCommand {
    /// Create or replace a job from a TOML or JSON file holding `name` and the definition.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List jobs.
    List {
        #[arg(long)]
        folder: Option<String>,
    },
    /// Print a job's definition (JSON), and when its next scheduled build comes.
    Show { name: String },
    /// List who changed a job's definition and when, newest first; with `--revision`,
    /// print that revision's definition.
    History {
        name: String,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Approve the head of a pull request from a fork that waits for it, queueing its build.
    Approve {
        name: String,
        /// The head you reviewed (7 or more hex digits): refused if the pull request has
        /// moved on since.
        #[arg(long)]
        sha: Option<String>,
    },
}

#[derive(Subcommand)]
enum BuildCommand {
    /// Trigger a build.
    Start {
        job: String,
        /// A parameter, `KEY=VALUE`; repeatable.
        #[arg(short = 'p', long = "param")]
        params: Vec<String>,
        /// Print the output as it comes and exit with the build's result.
        #[arg(long)]
        follow: bool,
        /// Run it before the builds already queued (a hotfix).
        #[arg(long)]
        next: bool,
    },
    /// Show one build: its status and why, what started it, and its steps.
    Show { job: String, number: u64 },
    /// List recent builds, newest first.
    List {
        job: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print a build's output.
    Log {
        job: String,
        number: u64,
        /// Keep printing until the build ends; exit with its result.
        #[arg(long)]
        follow: bool,
    },
    /// Run a build again, with its parameters and revision.
    Rebuild {
        job: String,
        number: u64,
        /// Of a matrix build: only the cells of its matrix that did not succeed.
        #[arg(long)]
        failed_cells: bool,
        /// Print the output as it comes and exit with the new build's result.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a queued or running build.
    Cancel {
        job: String,
        number: u64,
        /// Every build of the build's matrix still queued or running.
        #[arg(long)]
        matrix: bool,
    },
    /// Show a matrix build's whole matrix: each cell's build and status.
    Matrix { job: String, number: u64 },
    /// Pin an ended build: retention never removes it.
    Keep {
        job: String,
        number: u64,
        /// Why it is kept (a release, an incident), shown with it.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Unpin a build: its job's retention applies to it again.
    Unkeep { job: String, number: u64 },
    /// List the files a build archived, with their sizes.
    Artifacts { job: String, number: u64 },
    /// Download one archived file (its path as `artifacts` lists it).
    Download {
        job: String,
        number: u64,
        path: String,
        /// Where to write it; `-` for standard output. Default: its file name, here.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let follow = Follow {
        gateway: cli.gateway.clone(),
        token: cli.token.clone(),
    };
    let api = Api::new(&cli.url, cli.token)?;
    match cli.command {
        Command::Job(JobCommand::Apply { file }) => apply(&api, &file),
        Command::Job(JobCommand::Show { name }) => {
            let v = api.json(Method::GET, &format!("/api/v1/jobs/{name}"), None)?;
            println!("{}", serde_json::to_string_pretty(&v["definition"])?);
            if let Some(next) = v["next_scheduled_build"].as_str() {
                eprintln!("next scheduled build: {next}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job(JobCommand::History { name, revision }) => {
            let v = api.json(Method::GET, &format!("/api/v1/jobs/{name}/revisions"), None)?;
            let list = v["revisions"].as_array().cloned().unwrap_or_default();
            match revision {
                Some(n) => {
                    let r = list
                        .iter()
                        .find(|r| r["revision"].as_u64() == Some(n))
                        .with_context(|| format!("job {name} keeps no revision {n}"))?;
                    println!("{}", serde_json::to_string_pretty(&r["definition"])?);
                }
                None => {
                    for r in &list {
                        println!(
                            "#{:<4} {:<26} by {}",
                            r["revision"].as_u64().unwrap_or_default(),
                            r["at"].as_str().unwrap_or("-"),
                            r["by"].as_str().unwrap_or("-")
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job(JobCommand::Approve { name, sha }) => {
            let b = api.json(
                Method::POST,
                &format!("/api/v1/jobs/{name}/approve"),
                Some(&json!({ "sha": sha })),
            )?;
            eprintln!(
                "{name} #{}: queued ({})",
                b["number"],
                b["trigger"]["sha"].as_str().unwrap_or("-")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Job(JobCommand::List { folder }) => {
            let path = match folder {
                Some(f) => format!("/api/v1/jobs?folder={f}"),
                None => "/api/v1/jobs".to_owned(),
            };
            let v = api.json(Method::GET, &path, None)?;
            for j in v["jobs"].as_array().into_iter().flatten() {
                let d = &j["definition"];
                let folder = d["folder"].as_str().unwrap_or("-");
                let mut notes = Vec::new();
                if d["disabled"] == true {
                    notes.push("disabled".to_owned());
                }
                if let Some(s) = d["schedule"].as_str() {
                    notes.push(format!("schedule '{s}'"));
                }
                if let Some(c) = d["concurrency"].as_u64() {
                    notes.push(format!("concurrency {c}"));
                }
                let then: Vec<&str> = d["downstream"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["job"].as_str())
                    .collect();
                if !then.is_empty() {
                    notes.push(format!("then {}", then.join(" ")));
                }
                let name = j["name"].as_str().unwrap_or_default();
                println!("{:<40} {folder:<20} {}", name, notes.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret(SecretCommand::Set { name, folder }) => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("cannot read the secret's value from standard input")?;
            let value = value
                .strip_suffix('\n')
                .map_or(value.as_str(), |v| v.strip_suffix('\r').unwrap_or(v));
            api.json(
                Method::PUT,
                &format!("{}/{name}", secrets_path(folder.as_deref())),
                Some(&json!({ "value": value })),
            )?;
            eprintln!("secret {name} set");
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret(SecretCommand::List { folder }) => {
            let v = api.json(Method::GET, &secrets_path(folder.as_deref()), None)?;
            for s in v["secrets"].as_array().into_iter().flatten() {
                println!(
                    "{:<40} {:<26} {}",
                    s["name"].as_str().unwrap_or_default(),
                    s["updated_at"].as_str().unwrap_or_default(),
                    s["updated_by"].as_str().unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeCommand::List) => {
            let v = api.json(Method::GET, "/api/v1/nodes", None)?;
            for n in v["nodes"].as_array().into_iter().flatten() {
                println!("{}", node_line(n));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeCommand::Pause { id }) => {
            api.json(Method::POST, &format!("/api/v1/nodes/{id}/pause"), None)?;
            eprintln!("{id}: paused from its next heartbeat; it finishes what it runs");
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeCommand::Resume { id }) => {
            api.json(Method::POST, &format!("/api/v1/nodes/{id}/resume"), None)?;
            eprintln!("{id}: resumed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret(SecretCommand::Delete { name, folder }) => {
            api.send(
                Method::DELETE,
                &format!("{}/{name}", secrets_path(folder.as_deref())),
                None,
            )?;
            eprintln!("secret {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Start {
            job,
            params,
            follow: follow_output,
            next,
        }) => {
            let mut parameters = BTreeMap::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("parameter {p:?} must be KEY=VALUE"))?;
                parameters.insert(k.to_owned(), v.to_owned());
            }
            let b = api.json(
                Method::POST,
                &format!("/api/v1/jobs/{job}/builds"),
                Some(&json!({ "parameters": parameters, "next": next })),
            )?;
            started(&api, &follow, &job, &b, follow_output)
        }
        Command::Build(BuildCommand::Rebuild {
            job,
            number,
            failed_cells,
            follow: follow_output,
        }) => {
            let b = api.json(
                Method::POST,
                &format!("/api/v1/jobs/{job}/builds/{number}/rebuild"),
                Some(&json!({ "failed_cells": failed_cells })),
            )?;
            started(&api, &follow, &job, &b, follow_output)
        }
        Command::Build(BuildCommand::List { job, limit }) => {
            let v = api.json(
                Method::GET,
                &format!("/api/v1/jobs/{job}/builds?limit={limit}"),
                None,
            )?;
            for b in v["builds"].as_array().into_iter().flatten() {
                println!(
                    "#{:<6} {:<10} {:<26} {:<10} {}{}{}",
                    b["number"].as_u64().unwrap_or_default(),
                    b["status"].as_str().unwrap_or_default(),
                    b["queued_at"].as_str().unwrap_or_default(),
                    b["duration_ms"]
                        .as_u64()
                        .map(|d| format!("{d} ms"))
                        .unwrap_or_default(),
                    trigger_text(&b["trigger"]),
                    if b["keep"].is_object() { ", kept" } else { "" },
                    cell_text(&b["matrix"]["cell"])
                        .map(|c| format!(" [{c}]"))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Show { job, number }) => {
            let b = api.json(
                Method::GET,
                &format!("/api/v1/jobs/{job}/builds/{number}"),
                None,
            )?;
            print!("{}", show_build(&b));
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Log {
            job,
            number,
            follow: follow_output,
        }) => {
            if follow_output {
                return follow.run(&api, &job, number);
            }
            let text = api
                .send(
                    Method::GET,
                    &format!("/api/v1/jobs/{job}/builds/{number}/log"),
                    None,
                )?
                .text()?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Cancel {
            job,
            number,
            matrix: true,
        }) => {
            let v = api.json(
                Method::POST,
                &format!("/api/v1/jobs/{job}/builds/{number}/matrix/cancel"),
                None,
            )?;
            let list = v["cancelled"].as_array().cloned().unwrap_or_default();
            for c in &list {
                eprintln!(
                    "{job} #{}: {}",
                    c["number"],
                    c["outcome"].as_str().unwrap_or("-")
                );
            }
            if list.is_empty() {
                eprintln!("{job} #{number}: no build of its matrix was queued or running");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Matrix { job, number }) => {
            let v = api.json(
                Method::GET,
                &format!("/api/v1/jobs/{job}/builds/{number}/matrix"),
                None,
            )?;
            print!("{}", matrix_text(&v));
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Cancel { job, number, .. }) => {
            let res = api.send(
                Method::POST,
                &format!("/api/v1/jobs/{job}/builds/{number}/cancel"),
                None,
            )?;
            let b: Value = res.json()?;
            match b["outcome"].as_str() {
                Some("cancelled") => eprintln!("{job} #{number}: cancelled before it started"),
                _ => eprintln!("{job} #{number}: cancel requested; its worker stops it"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Keep {
            job,
            number,
            reason,
        }) => {
            api.json(
                Method::PUT,
                &format!("/api/v1/jobs/{job}/builds/{number}/keep"),
                Some(&json!({ "reason": reason })),
            )?;
            eprintln!("{job} #{number}: kept; retention will not remove it");
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Unkeep { job, number }) => {
            api.json(
                Method::DELETE,
                &format!("/api/v1/jobs/{job}/builds/{number}/keep"),
                None,
            )?;
            eprintln!("{job} #{number}: no longer kept");
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Artifacts { job, number }) => {
            let v = api.json(
                Method::GET,
                &format!("/api/v1/jobs/{job}/builds/{number}/artifacts"),
                None,
            )?;
            if let Some(at) = v["expired_at"].as_str() {
                eprintln!("{job} #{number}: its artifacts were removed at {at} (retention.artifacts_days)");
            }
            for a in v["artifacts"].as_array().into_iter().flatten() {
                println!(
                    "{:>12}  {}",
                    a["size"].as_u64().unwrap_or_default(),
                    a["path"].as_str().unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(BuildCommand::Download {
            job,
            number,
            path,
            output,
        }) => download(&api, &job, number, &path, output),
    }
}

/// Reports a build the api just queued (its document `b`): prints its number, or follows
/// its output to the end with `--follow`.
fn started(
    api: &Api,
    follow: &Follow,
    job: &str,
    b: &Value,
    follow_output: bool,
) -> anyhow::Result<ExitCode> {
    let n = b["number"]
        .as_u64()
        .context("the api returned no build number")?;
    let size = b["matrix"]["size"].as_u64().unwrap_or(1);
    if size > 1 {
        eprintln!(
            "started {job} #{n} to #{}, a matrix of {size} builds",
            n + size - 1
        );
    } else {
        eprintln!("started {job} #{n}");
    }
    if !follow_output {
        println!("{n}");
        return Ok(ExitCode::SUCCESS);
    }
    if size == 1 {
        return follow.run(api, job, n);
    }
    // Each cell's output in turn (the ones after the first replay what they printed so
    // far); the exit code is the whole matrix's.
    let mut all_passed = true;
    for k in n..n + size {
        eprintln!("--- {job} #{k} ---");
        let status = follow.status(api, job, k)?;
        eprintln!("{job} #{k}: {status}");
        all_passed &= status == "success";
    }
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A matrix cell's values in words: `OS=linux, RUST=stable`; `None` for no cell.
fn cell_text(cell: &Value) -> Option<String> {
    let c = cell.as_object()?;
    Some(
        c.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// `GET .../matrix` as `kiln build matrix` prints it.
fn matrix_text(v: &Value) -> String {
    let mut out = format!(
        "{} matrix #{}: {}\n",
        v["job"].as_str().unwrap_or("-"),
        v["group"],
        v["status"].as_str().unwrap_or("not ended")
    );
    for b in v["builds"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  #{:<6} {:<10} {}\n",
            b["number"].as_u64().unwrap_or_default(),
            b["status"].as_str().unwrap_or("gone"),
            cell_text(&b["cell"]).unwrap_or_default()
        ));
    }
    out
}

/// Streams one artifact to `output` (default: its file name in the working folder),
/// through a temporary file renamed into place, so a failed download leaves no partial file
/// under the name asked for.
fn download(
    api: &Api,
    job: &str,
    number: u64,
    path: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let encoded: Vec<String> = path.split('/').map(percent_encode).collect();
    let mut res = api.download(&format!(
        "/api/v1/jobs/{job}/builds/{number}/artifacts/{}",
        encoded.join("/")
    ))?;
    let target = output.unwrap_or_else(|| PathBuf::from(path.rsplit('/').next().unwrap_or(path)));
    if target.as_os_str() == "-" {
        res.copy_to(&mut std::io::stdout().lock())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut partial = target.clone().into_os_string();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    let written = (|| -> anyhow::Result<u64> {
        let mut f = std::fs::File::create(&partial)?;
        let n = res.copy_to(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&partial, &target)?;
        Ok(n)
    })();
    match written {
        Ok(n) => {
            eprintln!("{} ({n} bytes)", target.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.context(format!("cannot write {}", target.display())))
        }
    }
}

/// Percent-encodes one path segment (RFC 3986: everything but the unreserved characters).
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn apply(api: &Api, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut def: Value = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", file.display()))?
    } else {
        let t: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", file.display()))?;
        serde_json::to_value(t)?
    };
    let Some(obj) = def.as_object_mut() else {
        bail!(
            "{} must hold a table with `name` and the job definition",
            file.display()
        );
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) => n,
        _ => bail!("{} needs a `name` for the job", file.display()),
    };
    api.send(Method::PUT, &format!("/api/v1/jobs/{name}"), Some(&def))?;
    println!("applied job {name}");
    Ok(ExitCode::SUCCESS)
}

/// How `--follow` reaches the output: the gateway's WebSocket when configured, else the
/// api's log offsets.
struct Follow {
    gateway: Option<String>,
    token: Option<String>,
}

impl Follow {
    /// Prints the output until the build ends; exit code 0 for success, 1 otherwise.
    fn run(&self, api: &Api, job: &str, n: u64) -> anyhow::Result<ExitCode> {
        Ok(exit_for(&self.status(api, job, n)?, job, n))
    }

    /// Prints the output until the build ends; returns the status it ended with.
    fn status(&self, api: &Api, job: &str, n: u64) -> anyhow::Result<String> {
        if let Some(gw) = &self.gateway {
            match crate::ws::follow(gw, self.token.as_deref(), job, n) {
                Ok(status) => return Ok(status),
                Err(e) => {
                    eprintln!("kiln: the stream gateway failed ({e:#}); following over the api")
                }
            }
        }
        follow_log(api, job, n)
    }
}

/// What started a build, in a few words: `api by alice`, `schedule`, `after app #3 (success)`.
fn trigger_text(t: &Value) -> String {
    let kind = t["kind"].as_str().unwrap_or_default();
    let mut text = match (kind, &t["upstream"]) {
        ("upstream", u) => format!(
            "after {} #{} ({})",
            u["job"].as_str().unwrap_or("?"),
            u["number"],
            u["status"].as_str().unwrap_or("?")
        ),
        _ => kind.replace('_', " "),
    };
    if let Some(by) = t["by"].as_str() {
        text.push_str(&format!(" by {by}"));
    }
    if let Some(n) = t["rebuild_of"].as_u64() {
        text.push_str(&format!(", rebuild of #{n}"));
    }
    text
}

/// A build document as `kiln build show` prints it.
fn show_build(b: &Value) -> String {
    let text = |k: &str| b[k].as_str().unwrap_or("-").to_owned();
    let mut out = format!("{} #{}  {}\n", text("job"), b["number"], text("status"));
    if let Some(r) = b["reason"].as_str() {
        out.push_str(&format!("reason:    {r}\n"));
    }
    out.push_str(&format!("trigger:   {}\n", trigger_text(&b["trigger"])));
    for (label, key) in [("sha", "sha"), ("ref", "ref")] {
        if let Some(v) = b["trigger"][key].as_str() {
            out.push_str(&format!("{label:<10} {v}\n"));
        }
    }
    if let Some(p) = b["parameters"].as_object().filter(|p| !p.is_empty()) {
        let list: Vec<String> = p
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        out.push_str(&format!("params:    {}\n", list.join(" ")));
    }
    out.push_str(&format!(
        "queued:    {}\nstarted:   {}\nfinished:  {}\n",
        text("queued_at"),
        text("started_at"),
        text("finished_at")
    ));
    if let Some(node) = b["node"].as_str() {
        out.push_str(&format!("node:      {node} (attempt {})\n", b["attempt"]));
    }
    if let Some(cell) = cell_text(&b["matrix"]["cell"]) {
        out.push_str(&format!(
            "matrix:    {cell} (cell {} of {}, matrix #{})\n",
            b["matrix"]["index"].as_u64().map_or(0, |i| i + 1),
            b["matrix"]["size"],
            b["matrix"]["group"]
        ));
    }
    if let Some(list) = b["downstream_builds"].as_array().filter(|l| !l.is_empty()) {
        let names: Vec<String> = list
            .iter()
            .map(|d| format!("{} #{}", d["job"].as_str().unwrap_or("-"), d["number"]))
            .collect();
        out.push_str(&format!("then:      {}\n", names.join(", ")));
    }
    if let Some(k) = b["keep"].as_object() {
        let text = |key: &str| k.get(key).and_then(Value::as_str).unwrap_or("-");
        let mut line = format!("kept:      by {} at {}", text("by"), text("at"));
        if let Some(r) = k.get("reason").and_then(Value::as_str) {
            line.push_str(&format!(": {r}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    for s in b["steps"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  {:<24} {:<10} {:>8} ms",
            s["name"].as_str().unwrap_or_default(),
            s["status"].as_str().unwrap_or_default(),
            s["duration_ms"]
        );
        if let Some(c) = s["exit_code"].as_i64().filter(|c| *c != 0) {
            line.push_str(&format!("  exit {c}"));
        }
        if let Some(a) = s["attempts"].as_u64() {
            line.push_str(&format!("  {a} attempts"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One worker of `/nodes`: id, queue, state, and builds running against its slots.
fn node_line(n: &Value) -> String {
    let text = |k: &str| n[k].as_str().unwrap_or("-").to_owned();
    format!(
        "{:<32} {:<16} {:<9} {}/{}",
        text("id"),
        text("queue"),
        text("state"),
        n["builds"].as_array().map_or(0, Vec::len),
        n["concurrency"]
    )
}

fn exit_for(status: &str, job: &str, n: u64) -> ExitCode {
    eprintln!("{job} #{n}: {status}");
    if status == "success" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Follows a build's output over the api's log offsets until it ends; returns its status.
fn follow_log(api: &Api, job: &str, n: u64) -> anyhow::Result<String> {
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        let res = api.send(
            Method::GET,
            &format!("/api/v1/jobs/{job}/builds/{n}/log?offset={offset}"),
            None,
        )?;
        let header = |h: &str| {
            res.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let next = header("x-kiln-log-next-offset").and_then(|v| v.parse().ok());
        let more = header("x-kiln-log-more").as_deref() != Some("false");
        let text = res.text()?;
        out.write_all(text.as_bytes())?;
        out.flush()?;
        offset = next.unwrap_or(offset);
        if !more {
            break;
        }
        if text.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let b = api.json(Method::GET, &format!("/api/v1/jobs/{job}/builds/{n}"), None)?;
    Ok(b["status"].as_str().unwrap_or("unknown").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_shows_what_started_it_and_each_step() {
        let b = json!({"job": "deploy", "number": 4, "status": "failure",
            "reason": "step 'push' failed with exit code 2",
            "trigger": {"kind": "upstream", "by": "alice", "sha": "0123abc",
                "upstream": {"job": "app", "number": 9, "status": "success", "depth": 1}},
            "parameters": {"ENV": "staging"}, "queued_at": "2026-12-01T10:00:00Z",
            "started_at": "2026-12-01T10:00:01Z", "finished_at": "2026-12-01T10:00:05Z",
            "node": "w1", "attempt": 1,
            "keep": {"by": "carol", "at": "2026-12-01T11:00:00Z", "reason": "release 1.4"},
            "downstream_builds": [{"job": "notify", "number": 7}, {"job": "smoke", "number": 2}],
            "steps": [{"name": "build", "status": "success", "exit_code": 0, "duration_ms": 1200},
                {"name": "push", "status": "failure", "exit_code": 2, "duration_ms": 300, "attempts": 3}]});
        let out = show_build(&b);
        assert!(out.starts_with("deploy #4  failure\n"), "{out}");
        assert!(
            out.contains("trigger:   after app #9 (success) by alice\n"),
            "{out}"
        );
        assert!(
            out.contains("sha        0123abc\n") && out.contains("params:    ENV=staging\n"),
            "{out}"
        );
        assert!(out.contains("exit 2  3 attempts\n"), "{out}");
        assert!(
            out.contains("kept:      by carol at 2026-12-01T11:00:00Z: release 1.4\n"),
            "{out}"
        );
        assert!(out.contains("then:      notify #7, smoke #2\n"), "{out}");
        let node = json!({"id": "w1", "queue": "default", "state": "paused",
            "builds": ["job_app_3"], "concurrency": 4});
        assert_eq!(
            node_line(&node).split_whitespace().collect::<Vec<_>>(),
            ["w1", "default", "paused", "1/4"]
        );
        assert_eq!(
            trigger_text(&json!({"kind": "github_push", "by": "octocat"})),
            "github push by octocat"
        );
        assert_eq!(
            trigger_text(&json!({"kind": "api", "by": "bob", "rebuild_of": 2})),
            "api by bob, rebuild of #2"
        );
    }
}

//! The `vigie` command line: `run`, `check`, `lists`, `config`, `users`.
//!
//! Exit codes are part of the interface scripts rely on: `check` exits 0 when
//! allowed, 1 when blocked, 2 on error; every other command exits 0 on success and
//! 2 on error (1 for `config validate` finding problems, and for `lists update`
//! refusing what it downloaded; 3 when `lists update` could not tell the running
//! vigie to reload).

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use clap::{Args, Parser, Subcommand};

use vigie::config;
use vigie::identity::{Identity, IdentitySource};
use vigie::policy::{self, Verdict};
use vigie::snapshot::Snapshot;

#[derive(Parser)]
#[command(
    name = "vigie",
    version,
    about = "Content filter for school networks: DNS filter and web proxy"
)]
struct Cli {
    /// Configuration file (TOML). Absent: the embedded default configuration.
    #[arg(long, global = true, value_name = "FILE", env = "VIGIE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the filter (DNS, proxy, admin) in the foreground.
    Run(RunArgs),
    /// Decide one URL, host or IP and print the verdict with its explain trace.
    Check(CheckArgs),
    /// Inspect the category lists.
    #[command(subcommand)]
    Lists(ListsCommand),
    /// Validate or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the proxy's users file (Basic authentication, argon2 hashes).
    #[command(subcommand)]
    Users(UsersCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Delete events older than the configured retention now (the running service
    /// also does it every hour).
    Purge {
        /// State directory holding audit.db (default: the config's data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Blocked requests over a period, aggregated (no individual history).
    Stats {
        #[command(flatten)]
        period: PeriodArgs,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Export events of one person (--user) or of everyone. An export is a look at
    /// people's history: it needs --by and --justification, and is itself recorded.
    Export {
        #[command(flatten)]
        period: PeriodArgs,
        #[arg(long)]
        user: Option<String>,
        /// Who is exporting (recorded).
        #[arg(long)]
        by: String,
        /// Why (recorded; at least 15 characters).
        #[arg(long)]
        justification: String,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct PeriodArgs {
    /// Start, local time (`2026-11-23T00:00`) or RFC 3339; default: 24 hours ago.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End (exclusive); default: now.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user. The password is asked on the terminal, or read as one line of
    /// standard input — never taken from the command line, where `ps` and shell
    /// history would keep it.
    Add(UserArgs),
    /// Change a user's password (read like `add`).
    Passwd(UserArgs),
    /// Delete a user.
    Del(UserArgs),
    /// List user names.
    List {
        /// Users file (default: [proxy] users_file, else <data_dir>/users).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

#[derive(Args)]
struct UserArgs {
    /// Users file (default: [proxy] users_file, else <data_dir>/users).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The user's access code (letters, digits, '.', '_', '-', '@').
    name: String,
    /// The profile this person gets wherever they log in (`add`, `passwd`);
    /// default: the profile of the network they log in from.
    #[arg(long, value_name = "PROFILE")]
    profile: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// DNS listen address (UDP and TCP).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5353")]
    dns_listen: SocketAddr,
    /// Explicit proxy listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128")]
    proxy_listen: SocketAddr,
    /// Admin web app and /metrics listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    admin_listen: SocketAddr,
    /// Upstream DNS resolver (repeatable); overrides the config's [dns] upstreams.
    #[arg(long, value_name = "ADDR")]
    upstream: Vec<String>,
    /// State directory (list cache, audit store).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When started as root: the user to become once every port is bound (default
    /// `vigie`; it must exist). The data directory is handed to that user first.
    /// `--user root` keeps root (with a warning). Ignored when not started as root.
    #[arg(long, value_name = "NAME", env = "VIGIE_USER")]
    user: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// Decide for this profile.
    #[arg(long, conflicts_with = "ip")]
    profile: Option<String>,
    /// Decide for an unidentified client at this address (its network's profile).
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Local time in the configured time zone (`2026-11-23T10:15`) or RFC 3339.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// A URL (`http://host/path`), a host name, or an IP address.
    target: String,
}

#[derive(Subcommand)]
enum ListsCommand {
    /// Per source and category: entries loaded, bad lines, build time, memory.
    Stats,
    /// Download the configured lists (UT1's tarball, `[[lists]] url`) over HTTPS,
    /// verify them, put them in force atomically and reload the running vigie.
    /// Exit 0: updated or unchanged; 1: the downloaded lists were refused; 2: the
    /// update could not be made; 3: updated, but the running vigie could not be
    /// told. Nothing changes unless it exits 0 or 3.
    Update {
        /// Do not ask the running `vigie run` to reload (it uses the new lists at
        /// its next reload or start).
        #[arg(long)]
        no_reload: bool,
        /// State directory (default: the config's data_dir), as given to `vigie run`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Go back to the list set in force before the last update (or to the shipped
    /// lists) and reload the running vigie.
    Rollback {
        #[arg(long)]
        no_reload: bool,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every problem of a configuration file with file:line:column.
    Validate {
        /// The file to validate (default: --config, else the embedded default).
        file: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `--data-dir` names the state directory for every configuration this process
    // loads, so the running filter and `lists update` agree on where lists live.
    if let Command::Run(RunArgs {
        data_dir: Some(d), ..
    })
    | Command::Lists(ListsCommand::Update {
        data_dir: Some(d), ..
    })
    | Command::Lists(ListsCommand::Rollback {
        data_dir: Some(d), ..
    }) = &cli.command
    {
        config::override_data_dir(d.clone());
    }
    // Run by root, a command that writes where the service keeps its state becomes
    // the service's user first, so that it leaves no root-owned file there.
    if let Some(dir) = written_state_dir(cli.config.as_deref(), &cli.command)
        && let Err(e) = vigie::privileges::become_owner_of(&dir)
    {
        eprintln!("vigie: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Run(args) => run(cli.config, args),
        Command::Check(args) => check(cli.config, args),
        Command::Lists(ListsCommand::Stats) => lists_stats(cli.config),
        Command::Lists(ListsCommand::Update { no_reload, .. }) => {
            lists_update(cli.config, !no_reload)
        }
        Command::Lists(ListsCommand::Rollback { no_reload, .. }) => {
            lists_rollback(cli.config, !no_reload)
        }
        Command::Config(ConfigCommand::Validate { file }) => validate(file.or(cli.config)),
        Command::Users(cmd) => users(cli.config, cmd),
        Command::Audit(AuditCommand::Purge { data_dir }) => audit_purge(cli.config, data_dir),
        Command::Audit(AuditCommand::Stats { period, data_dir }) => {
            audit_stats(cli.config, period, data_dir)
        }
        Command::Audit(AuditCommand::Export {
            period,
            user,
            by,
            justification,
            format,
            data_dir,
        }) => audit_export(
            cli.config,
            period,
            user,
            &by,
            &justification,
            format,
            data_dir,
        ),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
    }
}

fn run(config: Option<PathBuf>, args: RunArgs) -> ExitCode {
    match vigie_app_run(config, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigie: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn vigie_app_run(config: Option<PathBuf>, args: RunArgs) -> anyhow::Result<()> {
    vigie::app::run(vigie::app::RunOptions {
        config,
        dns_listen: args.dns_listen,
        proxy_listen: args.proxy_listen,
        admin_listen: args.admin_listen,
        upstreams: args.upstream,
        data_dir: args.data_dir,
        user: args.user,
    })
}

fn load_snapshot(config: Option<&std::path::Path>) -> Result<Snapshot, ExitCode> {
    Snapshot::load(config, None).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Reads `--at`: local wall-clock time in the config's time zone, or RFC 3339.
fn parse_at(s: &str, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .ok_or_else(|| format!("invalid --at \"{s}\" (expected e.g. 2026-11-23T10:15)"))?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            format!(
                "--at \"{s}\" does not exist in {} (daylight saving gap)",
                tz.name()
            )
        })
}

fn check(config: Option<PathBuf>, args: CheckArgs) -> ExitCode {
    let snapshot = match load_snapshot(config.as_deref()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fail = |msg: String| {
        eprintln!("vigie check: {msg}");
        ExitCode::from(2)
    };
    let identity = match (&args.profile, args.ip) {
        (Some(p), _) => match snapshot.config.profile_id(p) {
            Some(id) => Identity::profile(id, IdentitySource::Operator),
            None => {
                let names = snapshot.config.profiles.iter().map(|p| p.name.as_str());
                return fail(format!(
                    "unknown profile \"{p}\"{}",
                    config::suggest(p, names)
                ));
            }
        },
        (None, Some(ip)) => Identity::from_ip(&snapshot, ip),
        (None, None) => Identity::profile(snapshot.config.default_profile, IdentitySource::Default),
    };
    let now = match &args.at {
        Some(s) => match parse_at(s, snapshot.config.timezone) {
            Ok(t) => t,
            Err(e) => return fail(e),
        },
        None => Utc::now(),
    };
    let target = args.target.trim();
    let parsed = policy::CheckTarget::parse(target);
    let request = parsed.request();
    let d = policy::decide(&snapshot, &request, &identity, now);
    let trace = d.explain(&snapshot, &request, &identity, now);
    if args.json {
        let listed: Vec<&str> = d.listed.iter().map(|c| snapshot.category_name(c)).collect();
        let out = serde_json::json!({
            "target": target,
            "verdict": d.verdict.as_str(),
            "profile": snapshot.profile_name(d.profile),
            "category": d.category.map(|c| snapshot.category_name(c)),
            "categories": listed,
            "rule": d.rule(&snapshot),
            "entry": d.entry(&snapshot, &request),
            "safe_search_target": match d.verdict { Verdict::SafeSearch { target } => Some(target), _ => None },
            "time": now.with_timezone(&snapshot.config.timezone).to_rfc3339(),
            "trace": trace,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        let verdict = match d.verdict {
            Verdict::Allow => "ALLOW".to_string(),
            Verdict::Block => format!("BLOCK ({})", d.category_name(&snapshot)),
            Verdict::SafeSearch { target } => format!("SAFE SEARCH → {target}"),
        };
        println!("{target}: {verdict}");
        for line in trace {
            println!("  {line}");
        }
    }
    match d.verdict {
        Verdict::Block => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

fn lists_stats(config: Option<PathBuf>) -> ExitCode {
    let snapshot = match load_snapshot(config.as_deref()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let lists = &snapshot.lists;
    let report = &lists.report;
    println!(
        "{:<40} {:<18} {:>9} {:>7} {:>7} {:>7} {:>6}",
        "source", "category", "domains", "urls", "exprs", "ips", "bad"
    );
    for s in &report.sources {
        let path = s.path.display().to_string();
        let short = path
            .rsplit('/')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:<40} {:<18} {:>9} {:>7} {:>7} {:>7} {:>6}",
            short,
            snapshot.category_name(s.category),
            s.domains,
            s.urls,
            s.expressions,
            s.ips,
            s.bad_lines
        );
        if let Some(why) = &s.skipped {
            println!("    skipped: {why}");
        }
        for b in &s.first_bad {
            println!("    {b}");
        }
        if s.bad_lines > s.first_bad.len() {
            println!(
                "    … and {} more bad lines",
                s.bad_lines - s.first_bad.len()
            );
        }
    }
    let n = lists.domains.len().max(1);
    println!();
    println!(
        "domain set: {} names, {} bytes ({:.1} B/name)",
        lists.domains.len(),
        lists.domains.memory_bytes(),
        lists.domains.memory_bytes() as f64 / n as f64
    );
    println!(
        "url set: {} entries, {} bytes",
        lists.urls.len(),
        lists.urls.memory_bytes()
    );
    println!(
        "ip set: {} prefixes, {} bytes",
        lists.ips.len(),
        lists.ips.memory_bytes()
    );
    match &snapshot.config.lists_set {
        Some(set) => {
            let when = vigie::lists::sets::read_manifest(set)
                .map(|m| format!(" (updated {})", m.created))
                .unwrap_or_default();
            println!("updated lists from {}{when}", set.display());
        }
        None => println!("lists as configured (no `vigie lists update` in force)"),
    }
    println!(
        "built in {:.3} s{}, total {} bytes",
        report.build_time.as_secs_f64(),
        if report.from_cache {
            " (from cache)"
        } else {
            ""
        },
        lists.memory_bytes()
    );
    ExitCode::SUCCESS
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} B"),
    }
}

/// Prints what a reload request became; the exit status of an update that is in
/// force either way.
fn report_reload(reload: Option<&vigie::update::Reload>) -> ExitCode {
    use vigie::update::Reload;
    match reload {
        None => {
            println!(
                "reload: not asked (--no-reload); the running vigie uses the new lists at its next reload"
            );
            ExitCode::SUCCESS
        }
        Some(Reload::Signalled(pid)) => {
            println!("reload: asked the running vigie (pid {pid}, SIGHUP); it logs the outcome");
            ExitCode::SUCCESS
        }
        Some(Reload::NotRunning(why)) => {
            println!("reload: no running vigie to tell ({why}); the lists apply at its next start");
            ExitCode::SUCCESS
        }
        Some(Reload::Failed(why)) => {
            eprintln!("vigie lists update: {why}; reload it yourself (systemctl reload vigie)");
            ExitCode::from(3)
        }
    }
}

fn lists_update(config: Option<PathBuf>, reload: bool) -> ExitCode {
    use vigie::update::{Change, Download, Outcome};
    let opts = vigie::update::Options {
        reload,
        now: Utc::now(),
    };
    let report = match vigie::update::update(config.as_deref(), &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigie lists update: {e}");
            eprintln!("vigie lists update: nothing was changed; the lists in force stay");
            return ExitCode::from(e.exit_code());
        }
    };
    for d in &report.downloads {
        let what = match d.result {
            Download::Downloaded(n) => format!("downloaded {}", human_bytes(n)),
            Download::NotModified => "not modified".to_string(),
            Download::SameContent(n) => format!("same content ({})", human_bytes(n)),
        };
        println!("{:<24} {what:<28} {}", d.what, d.url);
    }
    if !report.lists.is_empty() {
        println!();
        println!(
            "{:<32} {:<18} {:<10} {:>9} {:>6}",
            "list", "category", "change", "entries", "bad"
        );
    }
    for l in &report.lists {
        let change = match l.change {
            Change::New => "new",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        };
        println!(
            "{:<32} {:<18} {change:<10} {:>9} {:>6}",
            l.rel.display(),
            l.category,
            l.entries,
            l.bad_lines
        );
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    match &report.outcome {
        Outcome::NothingToUpdate => {
            println!(
                "nothing to update: no [[lists]] entry has a url, and no UT1 list is under [lists_update] ut1_path (or ut1_url is \"\")"
            );
            ExitCode::SUCCESS
        }
        Outcome::Unchanged { set } => {
            match set {
                Some(s) => println!("lists unchanged; {} stays in force", s.display()),
                None => println!("lists unchanged"),
            }
            ExitCode::SUCCESS
        }
        Outcome::Installed {
            set,
            previous,
            removed,
            reload,
        } => {
            println!();
            println!("in force: {}", set.display());
            match previous {
                Some(p) => println!("kept for `vigie lists rollback`: {}", p.display()),
                None => println!("before: the configured (shipped) lists"),
            }
            for r in removed {
                println!("removed: {}", r.display());
            }
            report_reload(reload.as_ref())
        }
    }
}

fn lists_rollback(config: Option<PathBuf>, reload: bool) -> ExitCode {
    match vigie::update::rollback(config.as_deref(), reload) {
        Ok((set, r)) => {
            match set {
                Some(s) => println!("in force: {}", s.display()),
                None => println!("in force: the configured (shipped) lists"),
            }
            report_reload(r.as_ref())
        }
        Err(e) => {
            eprintln!("vigie lists rollback: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn validate(file: Option<PathBuf>) -> ExitCode {
    let name = file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| config::EMBEDDED_NAME.to_string());
    match config::load(file.as_deref()) {
        Ok(cfg) => {
            // A config is only valid if its lists load too.
            match Snapshot::build(cfg, None) {
                Ok(s) => {
                    let bad: usize = s.lists.report.sources.iter().map(|r| r.bad_lines).sum();
                    println!(
                        "{name}: OK ({} profiles, {} categories, {} list sources, {} bad list lines)",
                        s.config.profiles.len(),
                        s.config.categories.len(),
                        s.config.sources.len(),
                        bad
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(errors) => {
            for d in &errors.0 {
                eprintln!("{d}");
            }
            eprintln!("{name}: {} problem(s) found", errors.0.len());
            ExitCode::from(1)
        }
    }
}

/// The users file: `--file`, else the config's `[proxy] users_file`, else
/// `<data_dir>/users`.
/// The directory `command` writes in when that is the service's state: the data
/// directory (audit store, lists) or the users file's directory.
fn written_state_dir(config: Option<&std::path::Path>, command: &Command) -> Option<PathBuf> {
    let data_dir = |given: &Option<PathBuf>| {
        given
            .clone()
            .or_else(|| config::load(config).ok()?.data_dir)
    };
    match command {
        Command::Audit(
            AuditCommand::Purge { data_dir: d }
            | AuditCommand::Stats { data_dir: d, .. }
            | AuditCommand::Export { data_dir: d, .. },
        )
        | Command::Lists(
            ListsCommand::Update { data_dir: d, .. } | ListsCommand::Rollback { data_dir: d, .. },
        ) => data_dir(d),
        Command::Users(UsersCommand::Add(a) | UsersCommand::Passwd(a) | UsersCommand::Del(a)) => {
            let file = users_file(config, a.file.clone()).ok()?;
            std::path::absolute(&file).ok()?.parent().map(PathBuf::from)
        }
        _ => None,
    }
}

fn users_file(config: Option<&std::path::Path>, file: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(f) = file {
        return Ok(f);
    }
    let cfg = config::load(config).map_err(|e| e.to_string())?;
    cfg.proxy
        .users_file
        .or_else(|| cfg.data_dir.map(|d| d.join("users")))
        .ok_or_else(|| {
            "no users file: give --file, or set [proxy] users_file or data_dir in the configuration"
                .to_string()
        })
}

/// A new password from the terminal (asked twice) or one line of standard input.
fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        let first =
            rpassword::prompt_password("Mot de passe / Password: ").map_err(|e| e.to_string())?;
        let again =
            rpassword::prompt_password("Confirmez / Confirm: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn users(config: Option<PathBuf>, cmd: UsersCommand) -> ExitCode {
    use vigie::identity::users as auth;
    let fail = |msg: String| {
        eprintln!("vigie users: {msg}");
        ExitCode::from(2)
    };
    let (file, name) = match &cmd {
        UsersCommand::Add(a) | UsersCommand::Passwd(a) | UsersCommand::Del(a) => {
            (a.file.clone(), Some(a.name.clone()))
        }
        UsersCommand::List { file } => (file.clone(), None),
    };
    let path = match users_file(config.as_deref(), file) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let result = match (&cmd, name.as_deref()) {
        (UsersCommand::Add(_), Some(n)) | (UsersCommand::Passwd(_), Some(n)) => {
            if !auth::valid_user_name(n) {
                return fail(auth::AuthError::BadName(n.to_string()).to_string());
            }
            let profile = match &cmd {
                UsersCommand::Add(a) | UsersCommand::Passwd(a) => a.profile.as_deref(),
                _ => None,
            };
            // A profile the configuration does not define would silently fall back
            // to the default one at login: refuse it here, with the known names.
            if let (Some(p), Ok(cfg)) = (profile, config::load(config.as_deref()))
                && cfg.profile_id(p).is_none()
            {
                let known: Vec<&str> = cfg.profiles.iter().map(|x| x.name.as_str()).collect();
                return fail(format!(
                    "unknown profile \"{p}\" (known: {})",
                    known.join(", ")
                ));
            }
            let password = match read_password() {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            auth::set_password(
                &path,
                n,
                &password,
                matches!(cmd, UsersCommand::Add(_)),
                profile,
            )
        }
        (UsersCommand::Del(_), Some(n)) => auth::delete_user(&path, n),
        _ => match auth::read_users(&path) {
            Ok(list) => {
                for u in list {
                    match u.profile {
                        Some(p) => println!("{}\t{p}", u.name),
                        None => println!("{}", u.name),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => {
            if let (Some(n), false) = (name, matches!(cmd, UsersCommand::List { .. })) {
                eprintln!("{}: {n} ok", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

/// Opens the configured audit store (SQLite under the data dir, or PostgreSQL).
fn open_audit_store(
    cfg: &config::Config,
    data_dir: Option<PathBuf>,
) -> Result<Box<dyn vigie::audit::store::Store>, String> {
    let dir = data_dir.or_else(|| cfg.data_dir.clone());
    match vigie::audit::store::open(&cfg.audit, dir.as_deref()) {
        Ok(Some(store)) => Ok(store),
        Ok(None) if cfg.audit.store == config::AuditStoreKind::None => {
            Err("[audit] store = \"none\": there is no audit store to read".into())
        }
        Ok(None) => Err("no data directory (use --data-dir or data_dir in the config)".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn audit_period(
    cfg: &config::Config,
    p: &PeriodArgs,
) -> Result<vigie::audit::store::Period, String> {
    let now = chrono::Utc::now();
    let from = match &p.from {
        Some(s) => parse_at(s, cfg.timezone)?,
        None => now - chrono::Duration::hours(24),
    };
    let to = match &p.to {
        Some(s) => parse_at(s, cfg.timezone)?,
        None => now,
    };
    if to <= from {
        return Err("--to must be after --from".into());
    }
    Ok(vigie::audit::store::Period { from, to })
}

fn audit_stats(config: Option<PathBuf>, period: PeriodArgs, data_dir: Option<PathBuf>) -> ExitCode {
    use vigie::audit::store::Dimension;
    let run = || -> Result<(), String> {
        let cfg = config::load(config.as_deref()).map_err(|e| e.to_string())?;
        let period = audit_period(&cfg, &period)?;
        let dir = data_dir.clone().or_else(|| cfg.data_dir.clone());
        let pseudo = match (cfg.audit.pseudonymize, &dir) {
            (false, _) => None,
            (true, Some(d)) => Some(
                vigie::audit::Pseudonymizer::open(d).map_err(|e| format!("pseudonym key: {e}"))?,
            ),
            (true, None) => return Err("[audit] pseudonymize needs a data directory".into()),
        };
        let mut store = open_audit_store(&cfg, data_dir)?;
        println!(
            "blocked requests from {} to {}",
            period.from.to_rfc3339(),
            period.to.to_rfc3339()
        );
        for (title, dim, n) in [
            ("by category", Dimension::Category, 50),
            ("by profile", Dimension::Profile, 50),
            ("top blocked domains", Dimension::Domain, 20),
            ("by hour (UTC)", Dimension::Hour, 24 * 31),
            (
                if pseudo.is_some() {
                    "top users (pseudonymised)"
                } else {
                    "top users"
                },
                Dimension::User,
                20,
            ),
        ] {
            println!("\n{title}:");
            let rows = vigie::audit::aggregate(store.as_mut(), dim, period, n, pseudo.as_ref())
                .map_err(|e| e.to_string())?;
            for (k, count) in rows {
                println!("  {count:>8}  {k}");
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigie audit stats: {e}");
            ExitCode::from(2)
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
fn audit_export(
    config: Option<PathBuf>,
    period: PeriodArgs,
    user: Option<String>,
    by: &str,
    justification: &str,
    format: ExportFormat,
    data_dir: Option<PathBuf>,
) -> ExitCode {
    use std::io::Write;
    use vigie::audit::store::HistoryAccess;
    let run = || -> Result<usize, String> {
        let cfg = config::load(config.as_deref()).map_err(|e| e.to_string())?;
        let period = audit_period(&cfg, &period)?;
        let mut store = open_audit_store(&cfg, data_dir)?;
        let access = HistoryAccess {
            accessed_by: by,
            justification,
        };
        let out = std::io::stdout();
        let mut out = std::io::BufWriter::new(out.lock());
        let io = |e: std::io::Error| e.to_string();
        if matches!(format, ExportFormat::Csv) {
            writeln!(out, "id,time,service,client_ip,user,profile,target,host,verdict,category,rule,entry,reference").map_err(io)?;
        }
        // Every page read is recorded as an access; pages are large so an export of
        // a month is one or a few records.
        const PAGE: usize = 100_000;
        let (mut before, mut n) = (None, 0);
        loop {
            let page = store
                .user_history(&access, user.as_deref(), period, before, PAGE)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            let more = page.len() == PAGE;
            for ev in &page {
                n += 1;
                match format {
                    ExportFormat::Jsonl => writeln!(
                        out,
                        "{}",
                        serde_json::to_string(ev).map_err(|e| e.to_string())?
                    )
                    .map_err(io)?,
                    ExportFormat::Csv => {
                        let opt = |o: &Option<String>| csv_field(o.as_deref().unwrap_or(""));
                        writeln!(
                            out,
                            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                            ev.id,
                            ev.time.to_rfc3339(),
                            csv_field(&ev.service),
                            csv_field(&ev.client_ip),
                            opt(&ev.user),
                            csv_field(&ev.profile),
                            csv_field(&ev.target),
                            csv_field(&ev.host),
                            csv_field(&ev.verdict),
                            opt(&ev.category),
                            csv_field(&ev.rule),
                            opt(&ev.entry),
                            opt(&ev.reference)
                        )
                        .map_err(io)?
                    }
                }
            }
            if !more {
                break;
            }
        }
        out.flush().map_err(io)?;
        Ok(n)
    };
    match run() {
        Ok(n) => {
            eprintln!("{n} events exported; this access is recorded");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigie audit export: {e}");
            ExitCode::from(2)
        }
    }
}

fn audit_purge(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    let run = || -> Result<(usize, u32), String> {
        let cfg = config::load(config.as_deref()).map_err(|e| e.to_string())?;
        let before =
            chrono::Utc::now() - chrono::Duration::days(i64::from(cfg.audit.retention_days));
        let mut store = open_audit_store(&cfg, data_dir)?;
        let n = store.purge(before).map_err(|e| e.to_string())?;
        Ok((n, cfg.audit.retention_days))
    };
    match run() {
        Ok((n, days)) => {
            println!("{n} audit events older than {days} days deleted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigie audit purge: {e}");
            ExitCode::from(2)
        }
    }
}

//! The `vigie` command line: `run`, `check`, `lists`, `config`, `users`.
//!
//! Exit codes are part of the interface scripts rely on: `check` exits 0 when
//! allowed, 1 when blocked, 2 on error; every other command exits 0 on success and
//! 2 on error (1 for `config validate` finding problems).

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
    match cli.command {
        Command::Run(args) => run(cli.config, args),
        Command::Check(args) => check(cli.config, args),
        Command::Lists(ListsCommand::Stats) => lists_stats(cli.config),
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

//! Command line: clap (derive) parses the syntax, this module checks the
//! ranges and which flags go together, and builds one `Config`.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Latency,
    Throughput,
    Soak,
    TaskApp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
            Mode::Soak => "soak",
            Mode::TaskApp => "taskapp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Mint HS256 tokens with this secret.
    Secret(String),
    /// Use this token as is.
    Token(String),
    /// Soak with `--spawn-server` and no secret given: make up a random one
    /// and give it to the server it starts.
    Random,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mode: Mode,
    pub url: String,
    pub host: String,
    pub port: u16,
    pub conns: usize,
    pub msgs: usize,
    pub rate: f64,
    pub senders: usize,
    pub payload: usize,
    pub pipeline: usize,
    pub server_pid: Option<u32>,
    pub hold: f64,
    pub timeout: f64,
    pub connect_timeout: f64,
    pub concurrency: usize,
    /// Loopback source addresses to spread clients over (None: automatic).
    pub source_ips: Option<usize>,
    pub auth: Auth,
    pub query_token: bool,
    pub json: bool,
    /// The `soak` subcommand's settings (None for the other modes).
    pub soak: Option<SoakArgs>,
    /// taskapp: clients per project (0 in the other modes).
    pub group: usize,
    /// taskapp: publishers present this key (BROADCAST_API_KEY) instead of
    /// a minted token.
    pub api_key: Option<String>,
}

/// Settings of `taskcast-load soak`.
#[derive(Debug, Clone, PartialEq)]
pub struct SoakArgs {
    /// Length of the main phase (churn, broadcasts, misbehaving clients).
    pub duration: f64,
    /// Path of the `taskcast` binary to start (None: attach to `--url`).
    pub spawn_server: Option<String>,
    /// Port for the started server (0: an ephemeral one, read from its log).
    pub port: u16,
    /// Clients connected for the whole run.
    pub base_conns: usize,
    /// Short-lived healthy clients started per second.
    pub churn_rate: f64,
    /// Lifetime of a churn client, uniform in [life_min, life_max] seconds.
    pub life_min: f64,
    pub life_max: f64,
    /// Misbehaving clients kept alive at once, per kind.
    pub slow: usize,
    pub silent: usize,
    pub oversized: usize,
    /// Clients sending invalid frames at once (they cycle through binary,
    /// unmasked, bad opcode and invalid UTF-8).
    pub invalid: usize,
    /// A misbehaving client's slot reconnects this long after it ended.
    pub respawn: f64,
    /// Share of the main phase (percent) before RSS must stay flat.
    pub warmup_pct: f64,
    /// RSS tolerance: last may exceed first by this percentage plus
    /// `rss_tol_kib`.
    pub rss_tol_pct: f64,
    pub rss_tol_kib: u64,
    /// Healthy clients' p99 delivery latency may not exceed this (ms).
    pub latency_limit_ms: f64,
    /// Bound for fds and /health to return to their baseline at the end.
    pub settle: f64,
    /// Publisher key (BROADCAST_API_KEY); random when the server is started
    /// here and none is given.
    pub api_key: Option<String>,
    /// Server settings the expectations depend on; given to a started
    /// server, and must match an attached one.
    pub ping_interval: u64,
    pub pong_wait: u64,
    pub send_queue_limit: usize,
    pub max_message_bytes: usize,
    /// Cluster soak: this many started instances joined through one
    /// redis-server started here (0: one instance, no Redis).
    pub cluster: usize,
}

impl Config {
    pub fn host_header(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `taskcast-load`: load generator for the taskcast WebSocket broadcast server.
///
/// Progress goes to stderr once a second; the summary to stdout. Exit 0 when
/// every connection opened and every client got every broadcast once and in
/// order, 1 when anything was missing, failed or timed out, 2 on bad arguments.
#[derive(Debug, Parser)]
#[command(name = "taskcast-load", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    mode: ModeArgs,
}

#[derive(Debug, Subcommand)]
enum ModeArgs {
    /// Hold N idle connections; server memory per connection.
    Idle {
        /// Connections to open.
        #[arg(long)]
        conns: usize,
        /// Seconds to hold them open.
        #[arg(long, default_value_t = 2.0)]
        hold: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Fan-out latency: broadcasts at a fixed rate from one sender.
    Latency {
        #[arg(long)]
        conns: usize,
        /// Broadcasts to post.
        #[arg(long)]
        msgs: usize,
        /// Broadcasts per second.
        #[arg(long)]
        rate: f64,
        #[command(flatten)]
        post: PostArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Throughput: broadcasts as fast as the server answers, from K senders.
    Throughput {
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        msgs: usize,
        /// Keep-alive sender connections (one thread each).
        #[arg(long)]
        senders: usize,
        #[command(flatten)]
        post: PostArgs,
        #[command(flatten)]
        common: Common,
    },
    /// The task-app shape: clients in projects, each subscribed to its
    /// project (and, as every connection, in its own user channel);
    /// publishers post to random projects at a fixed rate or at full speed.
    Taskapp {
        #[arg(long)]
        conns: usize,
        /// Clients per project (projects = conns / group).
        #[arg(long, default_value_t = 10)]
        group: usize,
        /// Publishes to post.
        #[arg(long)]
        msgs: usize,
        /// Publishes per second, all senders together [default: as fast as
        /// the answers come].
        #[arg(long)]
        rate: Option<f64>,
        /// Keep-alive publisher connections (one thread each).
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Publish with this key (the server's BROADCAST_API_KEY), as a
        /// Server Action does, instead of a minted token.
        #[arg(long)]
        api_key: Option<String>,
        #[command(flatten)]
        post: PostArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Soak: churn, broadcasts and misbehaving clients; a PASS/FAIL table.
    Soak {
        /// Broadcasts per second, one keep-alive sender.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[command(flatten)]
        post: PostArgs,
        #[command(flatten)]
        soak: SoakFlags,
        #[command(flatten)]
        common: Common,
    },
}

/// Flags of every mode that posts broadcasts.
#[derive(Debug, Args)]
struct PostArgs {
    /// Broadcast `data` size in bytes.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Requests in flight per sender connection; 1 = wait for each answer
    /// before the next POST, as a Next.js Server Action does
    /// [default: 8 for throughput, 16 for latency and soak].
    #[arg(long)]
    pipeline: Option<usize>,
}

/// Flags every mode takes.
#[derive(Debug, Args)]
struct Common {
    /// Server base URL, http only [default: http://127.0.0.1:8080].
    #[arg(long)]
    url: Option<String>,
    /// Mint HS256 tokens (sub=load-<i>, exp 1 h) with this secret [default: $JWT_SECRET].
    #[arg(long)]
    secret: Option<String>,
    /// Use this token as is instead of minting.
    #[arg(long)]
    token: Option<String>,
    /// Send the token as ?token= instead of an Authorization header.
    #[arg(long)]
    query_token: bool,
    /// Bound for each phase (connect, delivery), seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Bound for one WebSocket handshake, seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Spread clients over 127.0.0.1..127.0.0.N (loopback only; default: one
    /// address per 1000 clients, the server's default MAX_CONNECTIONS_PER_IP).
    #[arg(long)]
    source_ips: Option<usize>,
    /// Read server RSS / CPU time from /proc/PID.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Flags only `soak` takes.
#[derive(Debug, Args)]
struct SoakFlags {
    /// Start this taskcast binary on 127.0.0.1 (clean environment, the soak
    /// settings below, stderr captured and checked).
    #[arg(long, conflicts_with = "url")]
    spawn_server: Option<String>,
    /// Port for the started server (0: ephemeral).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Main phase, seconds.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Clients connected for the whole run.
    #[arg(long, default_value_t = 500)]
    base_conns: usize,
    /// Short-lived clients started per second.
    #[arg(long, default_value_t = 100.0)]
    churn_rate: f64,
    /// Shortest churn-client lifetime, seconds (uniform up to --life-max).
    #[arg(long, default_value_t = 1.0)]
    life_min: f64,
    #[arg(long, default_value_t = 20.0)]
    life_max: f64,
    /// Slow readers at once (stop reading; expect 1013).
    #[arg(long, default_value_t = 3)]
    slow: usize,
    /// Clients that never answer pings (expect a drop).
    #[arg(long, default_value_t = 3)]
    silent: usize,
    /// Clients sending more than MAX_MESSAGE_BYTES (expect 1009).
    #[arg(long, default_value_t = 2)]
    oversized: usize,
    /// Clients sending invalid frames (binary 1003, unmasked and bad opcode
    /// 1002, bad UTF-8 1007).
    #[arg(long, default_value_t = 4)]
    invalid: usize,
    /// A misbehaving client reconnects this long after it ended, seconds.
    #[arg(long, default_value_t = 1.0)]
    respawn: f64,
    /// RSS must stay flat after this share of the main phase (and after
    /// --life-max + 2 s), percent.
    #[arg(long, default_value_t = 20.0)]
    warmup_pct: f64,
    /// Last RSS may exceed the first post-warm-up one by this percentage ...
    #[arg(long, default_value_t = 10.0)]
    rss_tolerance_pct: f64,
    /// ... plus this many KiB.
    #[arg(long, default_value_t = 2048)]
    rss_tolerance_kib: u64,
    /// Healthy clients' p99 delivery latency limit, ms.
    #[arg(long, default_value_t = 1000.0)]
    latency_limit_ms: f64,
    /// Bound for fds and /health to return to baseline, seconds.
    #[arg(long, default_value_t = 15.0)]
    settle: f64,
    /// BROADCAST_API_KEY (random for a started server).
    #[arg(long)]
    api_key: Option<String>,
    /// Server setting PING_INTERVAL_SECS: given to a started server, must match an attached one.
    #[arg(long, default_value_t = 2)]
    ping_interval: u64,
    /// Server setting PONG_WAIT_SECS (as --ping-interval).
    #[arg(long, default_value_t = 5)]
    pong_wait: u64,
    /// Server setting SEND_QUEUE_LIMIT (as --ping-interval).
    #[arg(long, default_value_t = 64)]
    send_queue_limit: usize,
    /// Server setting MAX_MESSAGE_BYTES (as --ping-interval).
    #[arg(long, default_value_t = 512)]
    max_message_bytes: usize,
    /// Cluster soak: start N instances (2-8) on their own ports, joined
    /// through a redis-server (from PATH) started here; clients spread over
    /// them, broadcasts posted to them in turn. Needs --spawn-server.
    #[arg(long, value_name = "N")]
    cluster: Option<u8>,
}

/// Parses the arguments after the program name (clap does the syntax; the
/// ranges and combinations are checked here). `env_secret` is the value of
/// $JWT_SECRET, used when neither --secret nor --token is given. Help and
/// syntax errors come back as clap errors, to be shown with `.exit()`.
pub fn parse(args: &[String], env_secret: Option<String>) -> Result<Config, ParseError> {
    let argv = std::iter::once("taskcast-load".to_string()).chain(args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(ParseError::Syntax)?;
    cli.into_config(env_secret).map_err(ParseError::Invalid)
}

#[derive(Debug)]
pub enum ParseError {
    /// From clap, including `--help` (print it with `.exit()`).
    Syntax(clap::Error),
    /// A value out of range or a combination that does not go together.
    Invalid(String),
}

impl Cli {
    fn into_config(self, env_secret: Option<String>) -> Result<Config, String> {
        let mut taskapp = (0, None);
        let (mode, conns, msgs, rate, senders, post, hold, soak, common) = match self.mode {
            ModeArgs::Idle { conns, hold, common } => (Mode::Idle, conns, 0, 0.0, 0, None, hold, None, common),
            ModeArgs::Taskapp { conns, group, msgs, rate, senders, api_key, post, common } => {
                if group == 0 || !conns.is_multiple_of(group) {
                    return Err("--group must be at least 1 and divide --conns".into());
                }
                if api_key.as_ref().is_some_and(|k| k.len() < 16) {
                    return Err("--api-key must be at least 16 characters (the server refuses shorter keys)".into());
                }
                if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
                    return Err("--rate must be > 0 and <= 1000000 (publishes per second)".into());
                }
                taskapp = (group, api_key);
                // rate 0: as fast as the answers come
                (Mode::TaskApp, conns, msgs, rate.unwrap_or(0.0), senders, Some(post), 2.0, None, common)
            }
            ModeArgs::Latency { conns, msgs, rate, post, common } => {
                (Mode::Latency, conns, msgs, rate, 1, Some(post), 2.0, None, common)
            }
            ModeArgs::Throughput { conns, msgs, senders, post, common } => {
                (Mode::Throughput, conns, msgs, 0.0, senders, Some(post), 2.0, None, common)
            }
            ModeArgs::Soak { rate, post, soak, common } => {
                let s = soak_args(soak)?;
                (Mode::Soak, s.base_conns.max(1), 0, rate, 1, Some(post), 2.0, Some(s), common)
            }
        };
        check_counts(mode, conns, msgs, rate, senders)?;
        let (payload, pipeline) = post_shape(mode, post)?;
        let (timeout, connect_timeout) =
            (secs("timeout", common.timeout)?, secs("connect-timeout", common.connect_timeout)?);
        if timeout <= 0.0 || connect_timeout <= 0.0 {
            return Err("--timeout and --connect-timeout must be positive".into());
        }
        if common.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if matches!(common.source_ips, Some(n) if n == 0 || n > 250) {
            return Err("--source-ips must be between 1 and 250".into());
        }
        let spawned = soak.as_ref().is_some_and(|s| s.spawn_server.is_some());
        check_soak_target(soak.as_ref(), &common)?;
        let auth = pick_auth(common.secret, common.token, env_secret, spawned)?;
        let url = common.url.unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let (host, port) = parse_url(&url)?;
        Ok(Config {
            mode,
            url,
            host,
            port,
            conns,
            msgs,
            rate,
            senders,
            payload,
            pipeline,
            server_pid: common.server_pid,
            hold: secs("hold", hold)?,
            timeout,
            connect_timeout,
            concurrency: common.concurrency,
            source_ips: common.source_ips,
            auth,
            query_token: common.query_token,
            json: common.json,
            soak,
            group: taskapp.0,
            api_key: taskapp.1,
        })
    }
}

/// A duration flag: 0..=86400 seconds.
fn secs(name: &str, v: f64) -> Result<f64, String> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(format!("--{name} must be between 0 and 86400 seconds"));
    }
    Ok(v)
}

fn check_counts(mode: Mode, conns: usize, msgs: usize, rate: f64, senders: usize) -> Result<(), String> {
    if conns == 0 || conns > 1_000_000 {
        return Err("--conns must be between 1 and 1000000".into());
    }
    if matches!(mode, Mode::Latency | Mode::Throughput | Mode::TaskApp) {
        if msgs == 0 || msgs > 100_000_000 {
            return Err("--msgs must be between 1 and 100000000".into());
        }
        // one bit per (client, message) for duplicate/missing tracking
        if (conns as u128) * (msgs as u128) > 8 * (1u128 << 30) {
            return Err("--conns × --msgs must not exceed 8589934592 deliveries".into());
        }
    }
    if matches!(mode, Mode::Latency | Mode::Soak) && (!rate.is_finite() || rate <= 0.0 || rate > 1_000_000.0) {
        return Err("--rate must be > 0 and <= 1000000 (messages per second)".into());
    }
    if matches!(mode, Mode::Throughput | Mode::TaskApp) && (senders == 0 || senders > 256) {
        return Err("--senders must be between 1 and 256".into());
    }
    if mode == Mode::TaskApp && (!rate.is_finite() || !(0.0..=1_000_000.0).contains(&rate)) {
        return Err("--rate must be > 0 and <= 1000000 (publishes per second)".into());
    }
    Ok(())
}

/// Payload size and pipeline depth (with the per-mode default depth).
fn post_shape(mode: Mode, post: Option<PostArgs>) -> Result<(usize, usize), String> {
    let Some(post) = post else { return Ok((200, 1)) };
    if post.payload > 16 * 1024 * 1024 {
        return Err("--payload must be at most 16777216 bytes".into());
    }
    let pipeline = post.pipeline.unwrap_or(match mode {
        Mode::Throughput => 8,
        // a Server Action waits for each answer
        Mode::TaskApp => 1,
        _ => 16,
    });
    if pipeline == 0 || pipeline > 4096 {
        return Err("--pipeline must be between 1 and 4096".into());
    }
    Ok((post.payload, pipeline))
}

/// Soak either starts the server or attaches to one whose pid it knows.
fn check_soak_target(soak: Option<&SoakArgs>, common: &Common) -> Result<(), String> {
    let Some(s) = soak else { return Ok(()) };
    if s.spawn_server.is_none() && (common.server_pid.is_none() || common.url.is_none()) {
        return Err("soak needs --spawn-server PATH, or --url URL with --server-pid PID".into());
    }
    if s.spawn_server.is_some() && common.server_pid.is_some() {
        return Err("--server-pid goes with --url; a started server's pid is known".into());
    }
    Ok(())
}

fn pick_auth(
    secret: Option<String>,
    token: Option<String>,
    env_secret: Option<String>,
    spawned: bool,
) -> Result<Auth, String> {
    match (secret, token) {
        (Some(_), Some(_)) => Err("give either --secret or --token, not both".into()),
        (Some(s), None) => Ok(Auth::Secret(s)),
        (None, Some(t)) => Ok(Auth::Token(t)),
        (None, None) => match env_secret {
            Some(s) if !s.is_empty() => Ok(Auth::Secret(s)),
            _ if spawned => Ok(Auth::Random),
            _ => Err("need --secret S or --token T (or $JWT_SECRET)".into()),
        },
    }
}

fn soak_args(f: SoakFlags) -> Result<SoakArgs, String> {
    let span = |name: &str, v: f64, min: f64| -> Result<f64, String> {
        if !v.is_finite() || v < min || v > 86_400.0 {
            return Err(format!("--{name} must be between {min} and 86400"));
        }
        Ok(v)
    };
    let count = |name: &str, v: usize, max: usize| -> Result<usize, String> {
        if v > max {
            return Err(format!("--{name} must be at most {max}"));
        }
        Ok(v)
    };
    let pct = |name: &str, v: f64| -> Result<f64, String> {
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("--{name} must be between 0 and 100"));
        }
        Ok(v)
    };
    let s = SoakArgs {
        duration: span("duration", f.duration, 1.0)?,
        spawn_server: f.spawn_server,
        port: f.port,
        base_conns: count("base-conns", f.base_conns, 100_000)?,
        churn_rate: span("churn-rate", f.churn_rate, 0.0)?,
        life_min: span("life-min", f.life_min, 0.0)?,
        life_max: span("life-max", f.life_max, 0.0)?,
        slow: count("slow", f.slow, 100)?,
        silent: count("silent", f.silent, 100)?,
        oversized: count("oversized", f.oversized, 100)?,
        invalid: count("invalid", f.invalid, 100)?,
        respawn: span("respawn", f.respawn, 0.01)?,
        warmup_pct: pct("warmup-pct", f.warmup_pct)?,
        rss_tol_pct: pct("rss-tolerance-pct", f.rss_tolerance_pct)?,
        rss_tol_kib: f.rss_tolerance_kib,
        latency_limit_ms: span("latency-limit-ms", f.latency_limit_ms, 1.0)?,
        settle: span("settle", f.settle, 0.0)?,
        api_key: f.api_key,
        ping_interval: f.ping_interval,
        pong_wait: f.pong_wait,
        send_queue_limit: count("send-queue-limit", f.send_queue_limit, 1_000_000)?,
        max_message_bytes: count("max-message-bytes", f.max_message_bytes, 1 << 20)?,
        cluster: f.cluster.map_or(0, usize::from),
    };
    check_soak_combinations(&s)?;
    Ok(s)
}

fn check_soak_combinations(s: &SoakArgs) -> Result<(), String> {
    if s.life_min > s.life_max {
        return Err("--life-min must not exceed --life-max".into());
    }
    if s.churn_rate > 10_000.0 {
        return Err("--churn-rate must be at most 10000".into());
    }
    if s.ping_interval == 0 || s.ping_interval >= s.pong_wait {
        return Err("--ping-interval must be at least 1 and below --pong-wait".into());
    }
    if s.send_queue_limit == 0 {
        return Err("--send-queue-limit must be at least 1".into());
    }
    if s.max_message_bytes == 0 {
        return Err("--max-message-bytes must be at least 1".into());
    }
    if s.cluster != 0 && !(2..=8).contains(&s.cluster) {
        return Err("--cluster must be between 2 and 8".into());
    }
    if s.cluster != 0 && (s.spawn_server.is_none() || s.port != 0) {
        return Err("--cluster needs --spawn-server (the instances are started here) and no --port".into());
    }
    if s.api_key.as_ref().is_some_and(|k| k.len() < 16) {
        return Err("--api-key must be at least 16 characters (the server refuses shorter keys)".into());
    }
    Ok(())
}

/// Splits `http://host:port[/]` into host and port.
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.contains("://") {
        return Err(format!("--url {url}: only http:// URLs are supported"));
    } else {
        url
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("--url {url}: missing host"));
    }
    if authority.starts_with('[') {
        // [v6]:port
        let end = authority.find(']').ok_or_else(|| format!("--url {url}: bad IPv6 host"))?;
        let host = authority[..=end].to_string();
        let port = match authority[end + 1..].strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("--url {url}: bad port `{p}`"))?,
            None => 80,
        };
        return Ok((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse().map_err(|_| format!("--url {url}: bad port `{p}`"))?;
            if h.is_empty() {
                return Err(format!("--url {url}: missing host"));
            }
            Ok((h.to_string(), port))
        }
        None => Ok((authority.to_string(), 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Config, String> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v, None).map_err(|e| match e {
            ParseError::Syntax(e) => e.to_string(),
            ParseError::Invalid(e) => e,
        })
    }

    #[test]
    fn idle_defaults() {
        let c = p("idle --conns 1000 --secret abc").unwrap();
        assert_eq!(c.mode, Mode::Idle);
        assert_eq!(c.conns, 1000);
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 8080);
        assert_eq!(c.hold, 2.0);
        assert_eq!(c.timeout, 60.0);
        assert_eq!(c.concurrency, 500);
        assert_eq!(c.auth, Auth::Secret("abc".into()));
        assert!(!c.json);
        assert_eq!(c.server_pid, None);
        assert_eq!(c.source_ips, None);
        let c = p("idle --conns 10 --secret abc --source-ips 3").unwrap();
        assert_eq!(c.source_ips, Some(3));
        assert!(p("idle --conns 10 --secret abc --source-ips 0").is_err());
    }

    #[test]
    fn latency_and_throughput() {
        let c =
            p("latency --conns 10 --msgs 100 --rate 2.5 --payload 64 --url http://localhost:9000/ --token t --json")
                .unwrap();
        assert_eq!((c.conns, c.msgs, c.rate, c.payload), (10, 100, 2.5, 64));
        assert_eq!((c.host.as_str(), c.port), ("localhost", 9000));
        assert_eq!(c.auth, Auth::Token("t".into()));
        assert_eq!(c.pipeline, 16);
        assert!(c.json);
        let c = p("throughput --conns=200 --msgs 1000 --senders 4 --server-pid 77 --secret s").unwrap();
        assert_eq!((c.conns, c.msgs, c.senders, c.pipeline), (200, 1000, 4, 8));
        assert_eq!(c.server_pid, Some(77));
        assert_eq!(c.payload, 200);
    }

    #[test]
    fn taskapp_defaults_and_errors() {
        let c = p("taskapp --conns 10000 --msgs 500 --secret s").unwrap();
        assert_eq!(c.mode, Mode::TaskApp);
        assert_eq!((c.conns, c.group, c.msgs, c.senders, c.pipeline, c.rate), (10000, 10, 500, 4, 1, 0.0));
        assert_eq!(c.api_key, None);
        let c =
            p("taskapp --conns 100 --group 5 --msgs 9 --rate 250 --senders 2 --api-key 0123456789abcdef --secret s")
                .unwrap();
        assert_eq!((c.group, c.rate, c.senders), (5, 250.0, 2));
        assert_eq!(c.api_key.as_deref(), Some("0123456789abcdef"));
        assert!(p("taskapp --conns 100 --group 7 --msgs 9 --secret s").unwrap_err().contains("divide"));
        assert!(p("taskapp --conns 100 --group 0 --msgs 9 --secret s").is_err());
        assert!(p("taskapp --conns 100 --msgs 9 --rate 0 --secret s").unwrap_err().contains("--rate"));
        assert!(p("taskapp --conns 100 --msgs 9 --api-key short --secret s").unwrap_err().contains("--api-key"));
        assert!(p("taskapp --conns 100 --msgs 0 --secret s").unwrap_err().contains("--msgs"));
    }

    #[test]
    fn errors() {
        assert!(p("").is_err());
        assert!(p("bogus --conns 1 --secret s").is_err());
        assert!(p("idle --secret s").unwrap_err().contains("--conns"));
        assert!(p("idle --conns x --secret s").unwrap_err().contains("invalid value 'x'"));
        assert!(p("idle --conns 1").unwrap_err().contains("--secret"));
        assert!(p("idle --conns 1 --secret a --token b").is_err());
        assert!(p("idle --conns 1 --secret a --msgs 3").unwrap_err().contains("unexpected argument '--msgs'"));
        assert!(p("latency --conns 1 --msgs 3 --secret a").unwrap_err().contains("--rate"));
        assert!(p("latency --conns 1 --msgs 3 --rate 0 --secret a").is_err());
        assert!(p("throughput --conns 1 --msgs 3 --senders 0 --secret a").is_err());
        assert!(
            p("throughput --conns 1 --msgs 3 --senders 1 --pipeline 0 --secret a").unwrap_err().contains("--pipeline")
        );
        assert!(p("idle --conns 1 --secret").unwrap_err().contains("a value is required"));
        assert!(p("idle --conns 1 --secret a --wat 3").unwrap_err().contains("unexpected argument '--wat'"));
        assert!(p("idle --conns 1 --conns 2 --secret a").unwrap_err().contains("cannot be used multiple times"));
        assert!(p("idle --conns 1 --secret a --url https://x").is_err());
        assert!(p("idle --conns 1 --secret a stray").is_err());
        let help: Vec<String> = ["idle", "--help"].iter().map(|s| s.to_string()).collect();
        match parse(&help, None) {
            Err(ParseError::Syntax(e)) => assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp),
            other => panic!("--help gave {other:?}"),
        }
    }

    #[test]
    fn soak_defaults_and_flags() {
        let c = p("soak --spawn-server target/release/taskcast").unwrap();
        assert_eq!(c.mode, Mode::Soak);
        assert_eq!(c.auth, Auth::Random);
        assert_eq!((c.rate, c.payload, c.pipeline), (50.0, 200, 16));
        let s = c.soak.unwrap();
        assert_eq!(s.spawn_server.as_deref(), Some("target/release/taskcast"));
        assert_eq!((s.duration, s.base_conns, s.churn_rate, s.life_min, s.life_max), (600.0, 500, 100.0, 1.0, 20.0));
        assert_eq!((s.slow, s.silent, s.oversized, s.invalid), (3, 3, 2, 4));
        assert_eq!((s.ping_interval, s.pong_wait, s.send_queue_limit, s.max_message_bytes), (2, 5, 64, 512));
        assert_eq!((s.warmup_pct, s.rss_tol_pct, s.rss_tol_kib, s.port), (20.0, 10.0, 2048, 0));
        assert_eq!(s.cluster, 0);
        assert_eq!(p("soak --spawn-server x --cluster 2").unwrap().soak.unwrap().cluster, 2);

        let c = p(
            "soak --spawn-server x --duration 30 --base-conns 10 --churn-rate 5 --rate 20 --slow 0 --invalid 8 --json",
        )
        .unwrap();
        let s = c.soak.as_ref().unwrap();
        assert_eq!((s.duration, s.base_conns, s.churn_rate, s.slow, s.invalid), (30.0, 10, 5.0, 0, 8));
        assert_eq!(c.rate, 20.0);
        assert!(c.json);

        let c = p("soak --url http://127.0.0.1:9000 --server-pid 42 --secret s --pong-wait 8").unwrap();
        assert_eq!(c.server_pid, Some(42));
        assert_eq!(c.port, 9000);
        assert_eq!(c.soak.unwrap().pong_wait, 8);
    }

    #[test]
    fn soak_errors() {
        assert!(p("soak --duration 30").unwrap_err().contains("--spawn-server"));
        assert!(p("soak --url http://h:1 --secret s").unwrap_err().contains("--server-pid"));
        assert!(p("soak --spawn-server x --url http://h:1").unwrap_err().contains("cannot be used with"));
        assert!(p("soak --spawn-server x --server-pid 3").is_err());
        assert!(p("soak --url http://h:1 --server-pid 3").unwrap_err().contains("--secret"));
        assert!(p("soak --spawn-server x --conns 5").unwrap_err().contains("unexpected argument"));
        assert!(p("soak --spawn-server x --msgs 5").unwrap_err().contains("unexpected argument"));
        assert!(p("idle --conns 5 --secret s --duration 3").unwrap_err().contains("unexpected argument"));
        assert!(p("soak --spawn-server x --life-min 5 --life-max 2").is_err());
        assert!(p("soak --spawn-server x --ping-interval 5 --pong-wait 5").is_err());
        assert!(p("soak --spawn-server x --warmup-pct 120").is_err());
        assert!(p("soak --spawn-server x --api-key short").is_err());
        assert!(p("soak --spawn-server x --duration 0").is_err());
        assert!(p("soak --spawn-server x --rate 0").is_err());
        assert!(p("soak --spawn-server x --cluster 1").unwrap_err().contains("between 2 and 8"));
        assert!(p("soak --spawn-server x --cluster 9").unwrap_err().contains("between 2 and 8"));
        assert!(p("soak --spawn-server x --cluster 2 --port 9000").unwrap_err().contains("no --port"));
        assert!(
            p("soak --url http://h:1 --server-pid 3 --secret s --cluster 2").unwrap_err().contains("--spawn-server")
        );
    }

    #[test]
    fn env_secret_fallback() {
        let v: Vec<String> = ["idle", "--conns", "1"].iter().map(|s| s.to_string()).collect();
        let c = parse(&v, Some("envsecret".into())).unwrap();
        assert_eq!(c.auth, Auth::Secret("envsecret".into()));
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap(), ("127.0.0.1".into(), 8080));
        assert_eq!(parse_url("127.0.0.1:81").unwrap(), ("127.0.0.1".into(), 81));
        assert_eq!(parse_url("http://localhost").unwrap(), ("localhost".into(), 80));
        assert_eq!(parse_url("http://[::1]:9000/x").unwrap(), ("[::1]".into(), 9000));
        assert!(parse_url("http://h:notaport").is_err());
        assert!(parse_url("ws://h:1").is_err());
        assert!(parse_url("http://").is_err());
    }
}

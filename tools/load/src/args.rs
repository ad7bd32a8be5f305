//! Hand-written `--flag value` argument parser.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Latency,
    Throughput,
    Soak,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
            Mode::Soak => "soak",
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
}

impl Config {
    pub fn host_header(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub const USAGE: &str = "\
usage: taskcast-load <idle|latency|throughput|soak> [flags]

  idle       --conns N [--server-pid PID] [--hold SECS]
  latency    --conns N --msgs M --rate R [--payload BYTES]
  throughput --conns N --msgs M --senders K [--server-pid PID] [--payload BYTES]
  soak       (--spawn-server PATH | --url URL --server-pid PID) [--duration SECS]

soak flags (defaults in brackets):
  --spawn-server PATH    start this taskcast binary on 127.0.0.1 (clean environment,
                         soak settings below, stderr captured and checked)
  --port N               port for the started server [0: ephemeral]
  --duration SECS        main phase [600]
  --base-conns N         clients connected for the whole run [500]
  --churn-rate R         short-lived clients started per second [100]
  --life-min/--life-max  their lifetime in seconds, uniform [1, 20]
  --rate R               broadcasts per second, one keep-alive sender [50]
  --payload BYTES        broadcast data size [200]
  --slow N               slow readers at once (stop reading; expect 1013) [3]
  --silent N             clients that never answer pings (expect drop) [3]
  --oversized N          clients sending > MAX_MESSAGE_BYTES (expect 1009) [2]
  --invalid N            clients sending invalid frames (binary 1003, unmasked
                         and bad opcode 1002, bad UTF-8 1007) [4]
  --respawn SECS         a misbehaving client reconnects this long after it ended [1]
  --warmup-pct P         RSS must stay flat after this share of the main phase,
                         and after --life-max + 2 s (churn at full size) [20]
  --rss-tolerance-pct P, --rss-tolerance-kib K
                         last RSS may exceed the first post-warm-up one by
                         P% + K KiB [10, 2048]
  --latency-limit-ms MS  healthy clients' p99 delivery latency limit [1000]
  --settle SECS          bound for fds and /health to return to baseline [15]
  --api-key K            BROADCAST_API_KEY (random for a started server)
  --ping-interval S, --pong-wait S, --send-queue-limit N, --max-message-bytes N
                         server settings [2, 5, 64, 512]: given to a started
                         server; must match an attached one

common flags:
  --url URL              server base URL, http only (default http://127.0.0.1:8080)
  --secret S             mint HS256 tokens (sub=load-<i>, exp 1h) with this secret
                         (default: $JWT_SECRET if set)
  --token T              use this token as is instead of minting
  --query-token          send the token as ?token= instead of an Authorization header
  --timeout SECS         bound for each phase (connect, delivery), default 60
  --connect-timeout SECS bound for one WebSocket handshake, default 10
  --concurrency N        handshakes in flight at once, default 500
  --source-ips N         spread clients over 127.0.0.1..127.0.0.N (loopback only;
                         default: one address per 1000 clients, the server's
                         default MAX_CONNECTIONS_PER_IP; 1 = no binding)
  --pipeline N           requests in flight per sender connection
                         (default 16 for latency, 8 for throughput)
  --server-pid PID       read server RSS / CPU time from /proc/PID
  --json                 print one JSON object instead of the table
  -h, --help             this text
";

/// Flags that take a value (besides `SOAK_FLAGS`).
const VALUE_FLAGS: &[&str] = &[
    "url",
    "conns",
    "msgs",
    "rate",
    "senders",
    "payload",
    "pipeline",
    "server-pid",
    "hold",
    "timeout",
    "connect-timeout",
    "concurrency",
    "source-ips",
    "secret",
    "token",
];
/// Flags only `soak` takes.
const SOAK_FLAGS: &[&str] = &[
    "duration",
    "spawn-server",
    "port",
    "base-conns",
    "churn-rate",
    "life-min",
    "life-max",
    "slow",
    "silent",
    "oversized",
    "invalid",
    "respawn",
    "warmup-pct",
    "rss-tolerance-pct",
    "rss-tolerance-kib",
    "latency-limit-ms",
    "settle",
    "api-key",
    "ping-interval",
    "pong-wait",
    "send-queue-limit",
    "max-message-bytes",
];
const BOOL_FLAGS: &[&str] = &["json", "query-token"];

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

fn num<T: std::str::FromStr>(flags: &HashMap<String, String>, name: &str) -> Result<Option<T>, String> {
    match flags.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| format!("--{name}: `{v}` is not a valid number")),
    }
}

fn required<T: std::str::FromStr>(flags: &HashMap<String, String>, name: &str, mode: Mode) -> Result<T, String> {
    num(flags, name)?.ok_or_else(|| format!("{} needs --{name}", mode.name()))
}

/// Parses the arguments after the program name. `env_secret` is the value
/// of $JWT_SECRET, used when neither --secret nor --token is given.
/// Returns Ok(None) for --help.
pub fn parse(args: &[String], env_secret: Option<String>) -> Result<Option<Config>, String> {
    if args.is_empty() {
        return Err("missing subcommand".into());
    }
    if args.iter().any(|a| a == "-h" || a == "--help" || a == "help") {
        return Ok(None);
    }
    let mode = match args[0].as_str() {
        "idle" => Mode::Idle,
        "latency" => Mode::Latency,
        "throughput" => Mode::Throughput,
        "soak" => Mode::Soak,
        other => return Err(format!("unknown subcommand `{other}`")),
    };
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        let Some(body) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument `{a}`"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if BOOL_FLAGS.contains(&name) {
            if inline.is_some() {
                return Err(format!("--{name} takes no value"));
            }
            flags.insert(name.to_string(), String::new());
        } else if VALUE_FLAGS.contains(&name) || SOAK_FLAGS.contains(&name) {
            let v = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| format!("--{name} needs a value"))?
                }
            };
            if flags.insert(name.to_string(), v).is_some() {
                return Err(format!("--{name} given twice"));
            }
        } else {
            return Err(format!("unknown flag `--{name}`"));
        }
        i += 1;
    }

    let allowed: &[&str] = match mode {
        Mode::Idle => &["conns", "hold"],
        Mode::Latency => &["conns", "msgs", "rate", "payload", "pipeline"],
        Mode::Throughput => &["conns", "msgs", "senders", "payload", "pipeline"],
        Mode::Soak => &["rate", "payload", "pipeline"],
    };
    let mode_specific = ["conns", "hold", "msgs", "rate", "senders", "payload", "pipeline"];
    for f in mode_specific.iter().chain(SOAK_FLAGS) {
        let ok = allowed.contains(f) || (mode == Mode::Soak && SOAK_FLAGS.contains(f));
        if flags.contains_key(*f) && !ok {
            return Err(format!("--{f} does not apply to {}", mode.name()));
        }
    }
    if mode == Mode::Soak && flags.contains_key("url") && flags.contains_key("spawn-server") {
        return Err("give either --spawn-server or --url, not both".into());
    }

    let url = flags.get("url").cloned().unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let (host, port) = parse_url(&url)?;

    let soak = if mode == Mode::Soak { Some(parse_soak(&flags)?) } else { None };
    let conns: usize = match &soak {
        Some(s) => s.base_conns.max(1),
        None => required(&flags, "conns", mode)?,
    };
    if conns == 0 || conns > 1_000_000 {
        return Err("--conns must be between 1 and 1000000".into());
    }
    let (msgs, rate, senders): (usize, f64, usize) = match mode {
        Mode::Idle => (0, 0.0, 0),
        Mode::Latency => (required(&flags, "msgs", mode)?, required(&flags, "rate", mode)?, 1),
        Mode::Throughput => (required(&flags, "msgs", mode)?, 0.0, required(&flags, "senders", mode)?),
        Mode::Soak => (0, num(&flags, "rate")?.unwrap_or(50.0), 1),
    };
    if matches!(mode, Mode::Latency | Mode::Throughput) {
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
    if mode == Mode::Throughput && (senders == 0 || senders > 256) {
        return Err("--senders must be between 1 and 256".into());
    }
    let payload: usize = num(&flags, "payload")?.unwrap_or(200);
    if payload > 16 * 1024 * 1024 {
        return Err("--payload must be at most 16777216 bytes".into());
    }
    let pipeline: usize = num(&flags, "pipeline")?.unwrap_or(if mode == Mode::Throughput { 8 } else { 16 });
    if pipeline == 0 || pipeline > 4096 {
        return Err("--pipeline must be between 1 and 4096".into());
    }
    let secs = |name: &str, default: f64| -> Result<f64, String> {
        let v: f64 = num(&flags, name)?.unwrap_or(default);
        if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
            return Err(format!("--{name} must be between 0 and 86400 seconds"));
        }
        Ok(v)
    };
    let hold = secs("hold", 2.0)?;
    let timeout = secs("timeout", 60.0)?;
    let connect_timeout = secs("connect-timeout", 10.0)?;
    if timeout <= 0.0 || connect_timeout <= 0.0 {
        return Err("--timeout and --connect-timeout must be positive".into());
    }
    let concurrency: usize = num(&flags, "concurrency")?.unwrap_or(500);
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let server_pid: Option<u32> = num(&flags, "server-pid")?;
    if let Some(s) = &soak
        && s.spawn_server.is_none()
        && (server_pid.is_none() || !flags.contains_key("url"))
    {
        return Err("soak needs --spawn-server PATH, or --url URL with --server-pid PID".into());
    }
    if soak.as_ref().is_some_and(|s| s.spawn_server.is_some()) && server_pid.is_some() {
        return Err("--server-pid goes with --url; a started server's pid is known".into());
    }
    let source_ips: Option<usize> = num(&flags, "source-ips")?;
    if matches!(source_ips, Some(n) if n == 0 || n > 250) {
        return Err("--source-ips must be between 1 and 250".into());
    }

    let auth = match (flags.get("secret"), flags.get("token")) {
        (Some(_), Some(_)) => return Err("give either --secret or --token, not both".into()),
        (Some(s), None) => Auth::Secret(s.clone()),
        (None, Some(t)) => Auth::Token(t.clone()),
        (None, None) => match env_secret {
            Some(s) if !s.is_empty() => Auth::Secret(s),
            _ if soak.as_ref().is_some_and(|s| s.spawn_server.is_some()) => Auth::Random,
            _ => return Err("need --secret S or --token T (or $JWT_SECRET)".into()),
        },
    };

    Ok(Some(Config {
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
        server_pid,
        hold,
        timeout,
        connect_timeout,
        concurrency,
        source_ips,
        auth,
        query_token: flags.contains_key("query-token"),
        json: flags.contains_key("json"),
        soak,
    }))
}

fn parse_soak(flags: &HashMap<String, String>) -> Result<SoakArgs, String> {
    let secs = |name: &str, default: f64, min: f64| -> Result<f64, String> {
        let v: f64 = num(flags, name)?.unwrap_or(default);
        if !v.is_finite() || v < min || v > 86_400.0 {
            return Err(format!("--{name} must be between {min} and 86400"));
        }
        Ok(v)
    };
    let count = |name: &str, default: usize, max: usize| -> Result<usize, String> {
        let v: usize = num(flags, name)?.unwrap_or(default);
        if v > max {
            return Err(format!("--{name} must be at most {max}"));
        }
        Ok(v)
    };
    let pct = |name: &str, default: f64| -> Result<f64, String> {
        let v: f64 = num(flags, name)?.unwrap_or(default);
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("--{name} must be between 0 and 100"));
        }
        Ok(v)
    };
    let s = SoakArgs {
        duration: secs("duration", 600.0, 1.0)?,
        spawn_server: flags.get("spawn-server").cloned(),
        port: num(flags, "port")?.unwrap_or(0),
        base_conns: count("base-conns", 500, 100_000)?,
        churn_rate: secs("churn-rate", 100.0, 0.0)?,
        life_min: secs("life-min", 1.0, 0.0)?,
        life_max: secs("life-max", 20.0, 0.0)?,
        slow: count("slow", 3, 100)?,
        silent: count("silent", 3, 100)?,
        oversized: count("oversized", 2, 100)?,
        invalid: count("invalid", 4, 100)?,
        respawn: secs("respawn", 1.0, 0.01)?,
        warmup_pct: pct("warmup-pct", 20.0)?,
        rss_tol_pct: pct("rss-tolerance-pct", 10.0)?,
        rss_tol_kib: num(flags, "rss-tolerance-kib")?.unwrap_or(2048),
        latency_limit_ms: secs("latency-limit-ms", 1000.0, 1.0)?,
        settle: secs("settle", 15.0, 0.0)?,
        api_key: flags.get("api-key").cloned(),
        ping_interval: num(flags, "ping-interval")?.unwrap_or(2),
        pong_wait: num(flags, "pong-wait")?.unwrap_or(5),
        send_queue_limit: count("send-queue-limit", 64, 1_000_000)?,
        max_message_bytes: count("max-message-bytes", 512, 1 << 20)?,
    };
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
    if s.api_key.as_ref().is_some_and(|k| k.len() < 16) {
        return Err("--api-key must be at least 16 characters (the server refuses shorter keys)".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Config>, String> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v, None)
    }

    #[test]
    fn idle_defaults() {
        let c = p("idle --conns 1000 --secret abc").unwrap().unwrap();
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
        let c = p("idle --conns 10 --secret abc --source-ips 3").unwrap().unwrap();
        assert_eq!(c.source_ips, Some(3));
        assert!(p("idle --conns 10 --secret abc --source-ips 0").is_err());
    }

    #[test]
    fn latency_and_throughput() {
        let c =
            p("latency --conns 10 --msgs 100 --rate 2.5 --payload 64 --url http://localhost:9000/ --token t --json")
                .unwrap()
                .unwrap();
        assert_eq!((c.conns, c.msgs, c.rate, c.payload), (10, 100, 2.5, 64));
        assert_eq!((c.host.as_str(), c.port), ("localhost", 9000));
        assert_eq!(c.auth, Auth::Token("t".into()));
        assert_eq!(c.pipeline, 16);
        assert!(c.json);
        let c = p("throughput --conns=200 --msgs 1000 --senders 4 --server-pid 77 --secret s").unwrap().unwrap();
        assert_eq!((c.conns, c.msgs, c.senders, c.pipeline), (200, 1000, 4, 8));
        assert_eq!(c.server_pid, Some(77));
        assert_eq!(c.payload, 200);
    }

    #[test]
    fn errors() {
        assert!(p("").is_err());
        assert!(p("bogus --conns 1 --secret s").is_err());
        assert!(p("idle --secret s").unwrap_err().contains("--conns"));
        assert!(p("idle --conns x --secret s").unwrap_err().contains("not a valid number"));
        assert!(p("idle --conns 1").unwrap_err().contains("--secret"));
        assert!(p("idle --conns 1 --secret a --token b").is_err());
        assert!(p("idle --conns 1 --secret a --msgs 3").unwrap_err().contains("does not apply"));
        assert!(p("latency --conns 1 --msgs 3 --secret a").unwrap_err().contains("--rate"));
        assert!(p("latency --conns 1 --msgs 3 --rate 0 --secret a").is_err());
        assert!(p("throughput --conns 1 --msgs 3 --senders 0 --secret a").is_err());
        assert!(p("idle --conns 1 --secret").unwrap_err().contains("needs a value"));
        assert!(p("idle --conns 1 --secret a --wat 3").unwrap_err().contains("unknown flag"));
        assert!(p("idle --conns 1 --conns 2 --secret a").unwrap_err().contains("twice"));
        assert!(p("idle --conns 1 --secret a --url https://x").is_err());
        assert!(p("idle --conns 1 --secret a stray").is_err());
        assert_eq!(p("idle --help").unwrap(), None);
    }

    #[test]
    fn soak_defaults_and_flags() {
        let c = p("soak --spawn-server target/release/taskcast").unwrap().unwrap();
        assert_eq!(c.mode, Mode::Soak);
        assert_eq!(c.auth, Auth::Random);
        assert_eq!((c.rate, c.payload, c.pipeline), (50.0, 200, 16));
        let s = c.soak.unwrap();
        assert_eq!(s.spawn_server.as_deref(), Some("target/release/taskcast"));
        assert_eq!((s.duration, s.base_conns, s.churn_rate, s.life_min, s.life_max), (600.0, 500, 100.0, 1.0, 20.0));
        assert_eq!((s.slow, s.silent, s.oversized, s.invalid), (3, 3, 2, 4));
        assert_eq!((s.ping_interval, s.pong_wait, s.send_queue_limit, s.max_message_bytes), (2, 5, 64, 512));
        assert_eq!((s.warmup_pct, s.rss_tol_pct, s.rss_tol_kib, s.port), (20.0, 10.0, 2048, 0));

        let c = p(
            "soak --spawn-server x --duration 30 --base-conns 10 --churn-rate 5 --rate 20 --slow 0 --invalid 8 --json",
        )
        .unwrap()
        .unwrap();
        let s = c.soak.as_ref().unwrap();
        assert_eq!((s.duration, s.base_conns, s.churn_rate, s.slow, s.invalid), (30.0, 10, 5.0, 0, 8));
        assert_eq!(c.rate, 20.0);
        assert!(c.json);

        let c = p("soak --url http://127.0.0.1:9000 --server-pid 42 --secret s --pong-wait 8").unwrap().unwrap();
        assert_eq!(c.server_pid, Some(42));
        assert_eq!(c.port, 9000);
        assert_eq!(c.soak.unwrap().pong_wait, 8);
    }

    #[test]
    fn soak_errors() {
        assert!(p("soak --duration 30").unwrap_err().contains("--spawn-server"));
        assert!(p("soak --url http://h:1 --secret s").unwrap_err().contains("--server-pid"));
        assert!(p("soak --spawn-server x --url http://h:1").unwrap_err().contains("not both"));
        assert!(p("soak --spawn-server x --server-pid 3").is_err());
        assert!(p("soak --url http://h:1 --server-pid 3").unwrap_err().contains("--secret"));
        assert!(p("soak --spawn-server x --conns 5").unwrap_err().contains("does not apply"));
        assert!(p("soak --spawn-server x --msgs 5").unwrap_err().contains("does not apply"));
        assert!(p("idle --conns 5 --secret s --duration 3").unwrap_err().contains("does not apply"));
        assert!(p("soak --spawn-server x --life-min 5 --life-max 2").is_err());
        assert!(p("soak --spawn-server x --ping-interval 5 --pong-wait 5").is_err());
        assert!(p("soak --spawn-server x --warmup-pct 120").is_err());
        assert!(p("soak --spawn-server x --api-key short").is_err());
        assert!(p("soak --spawn-server x --duration 0").is_err());
        assert!(p("soak --spawn-server x --rate 0").is_err());
    }

    #[test]
    fn env_secret_fallback() {
        let v: Vec<String> = ["idle", "--conns", "1"].iter().map(|s| s.to_string()).collect();
        let c = parse(&v, Some("envsecret".into())).unwrap().unwrap();
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

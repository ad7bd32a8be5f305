//! Hand-written `--flag value` argument parser.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Latency,
    Throughput,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Mint HS256 tokens with this secret.
    Secret(String),
    /// Use this token as is.
    Token(String),
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
}

impl Config {
    pub fn host_header(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub const USAGE: &str = "\
usage: taskcast-load <idle|latency|throughput> [flags]

  idle       --conns N [--server-pid PID] [--hold SECS]
  latency    --conns N --msgs M --rate R [--payload BYTES]
  throughput --conns N --msgs M --senders K [--server-pid PID] [--payload BYTES]

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
        } else if VALUE_FLAGS.contains(&name) {
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
        Mode::Idle => &["hold"],
        Mode::Latency => &["msgs", "rate", "payload", "pipeline"],
        Mode::Throughput => &["msgs", "senders", "payload", "pipeline"],
    };
    let mode_specific = ["hold", "msgs", "rate", "senders", "payload", "pipeline"];
    for f in mode_specific {
        if flags.contains_key(f) && !allowed.contains(&f) {
            return Err(format!("--{f} does not apply to {}", mode.name()));
        }
    }

    let url = flags.get("url").cloned().unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let (host, port) = parse_url(&url)?;

    let conns: usize = required(&flags, "conns", mode)?;
    if conns == 0 || conns > 1_000_000 {
        return Err("--conns must be between 1 and 1000000".into());
    }
    let (msgs, rate, senders): (usize, f64, usize) = match mode {
        Mode::Idle => (0, 0.0, 0),
        Mode::Latency => (required(&flags, "msgs", mode)?, required(&flags, "rate", mode)?, 1),
        Mode::Throughput => (required(&flags, "msgs", mode)?, 0.0, required(&flags, "senders", mode)?),
    };
    if mode != Mode::Idle {
        if msgs == 0 || msgs > 100_000_000 {
            return Err("--msgs must be between 1 and 100000000".into());
        }
        // one bit per (client, message) for duplicate/missing tracking
        if (conns as u128) * (msgs as u128) > 8 * (1u128 << 30) {
            return Err("--conns × --msgs must not exceed 8589934592 deliveries".into());
        }
    }
    if mode == Mode::Latency && (!rate.is_finite() || rate <= 0.0 || rate > 1_000_000.0) {
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
    }))
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

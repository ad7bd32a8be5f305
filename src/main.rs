//! `taskcast` — run the server, or `taskcast token` to mint a test token.

use std::process::ExitCode;

use taskcast::config::ConfigError;
use taskcast::logs::{self, LogFormat};
use taskcast::{Config, Server, auth, demo};

const USAGE: &str = "\
usage:
  taskcast                               run the server (configured by env / .env)
  taskcast token [--sub ID] [--ttl SECS] print an HS256 token signed with JWT_SECRET
  taskcast --help";

fn main() -> ExitCode {
    // A .env in the working directory fills in what the environment lacks.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("taskcast: cannot read .env: {e}");
        return ExitCode::from(2);
    }
    match LogFormat::from_lookup(|k| std::env::var(k).ok()) {
        Ok(format) => logs::init(format),
        Err(e) => {
            eprintln!("taskcast: {e}");
            return ExitCode::from(2);
        }
    }

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => serve(),
        Some("token") => token(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("taskcast: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn config() -> Result<Config, ExitCode> {
    Config::from_env().map_err(|e| {
        eprintln!("taskcast: {e}");
        ExitCode::from(2)
    })
}

fn serve() -> ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.jwt_secret.as_ref().is_some_and(|s| s.expose().len() < 32) && !config.jwt_secret_generated {
        log::warn!("JWT_SECRET is shorter than 32 bytes: use a long random secret in production");
    }
    let dev_secret = if config.jwt_secret_generated { config.jwt_secret.clone() } else { None };
    let loopback_only = config.dev_loopback_only;
    let mut server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            // Loading the JWKS keys happens in `bind`: its failure is a
            // configuration error naming JWKS_URL or JWKS_FILE.
            match e.get_ref().and_then(|inner| inner.downcast_ref::<ConfigError>()) {
                Some(config_error) => eprintln!("taskcast: {config_error}"),
                None => eprintln!("taskcast: cannot listen (HOST/PORT): {e}"),
            }
            return ExitCode::from(2);
        }
    };
    if let Err(e) = server.shutdown_on_signals() {
        eprintln!("taskcast: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    taskcast::server::log_startup(&server);
    if let Some(secret) = dev_secret {
        print_dev_help(secret.expose(), server.local_addr(), loopback_only);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// With no JWT_SECRET, the server runs on a random per-run secret; this
/// prints a token for it so a newcomer can try the API straight away.
/// Unless HOST was set, development mode listens on 127.0.0.1 only.
fn print_dev_help(secret: &[u8], addr: std::net::SocketAddr, loopback_only: bool) {
    log::warn!("JWT_SECRET is not set: using a random secret for this run only (development mode)");
    let reach = if loopback_only {
        format!(
            "Listening on {addr} only (this machine): development mode does not listen on other\n\
             interfaces unless HOST is set (e.g. HOST=0.0.0.0).\n"
        )
    } else {
        format!("Listening on {addr} (HOST is set).\n")
    };
    if loopback_only {
        log::warn!("development mode: listening on {addr} only; set HOST to listen on other interfaces");
    }
    let token = demo::dev_token(secret);
    let port = addr.port();
    println!(
        "\n=== taskcast development mode ===\n\
         No JWT_SECRET set, so this run uses a random secret.\n{reach}A token valid for 24 h:\n\n  \
         TOKEN={token}\n\n\
         Demo page (a live task list; open it in two tabs):\n  \
         http://localhost:{port}/#token={token}\n\n\
         Try it:\n  \
         curl http://localhost:{port}/health\n  \
         curl -X POST http://localhost:{port}/api/broadcast -H \"Authorization: Bearer $TOKEN\" \\\n       \
         -H 'Content-Type: application/json' -d '{{\"type\":\"task_created\",\"data\":{{\"id\":\"1\",\"title\":\"Hello\"}}}}'\n  \
         WebSocket: ws://localhost:{port}/ws?token=$TOKEN\n\n\
         Set JWT_SECRET (the same secret your front end signs with) for real use.\n"
    );
}

fn token(args: &[String]) -> ExitCode {
    let mut sub = "taskcast-cli".to_string();
    let mut ttl: u64 = 3600;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next();
        match (flag.as_str(), value) {
            ("--sub", Some(v)) => sub = v.clone(),
            ("--ttl", Some(v)) => match v.parse() {
                Ok(n) if n > 0 => ttl = n,
                _ => {
                    eprintln!("taskcast token: --ttl needs a positive number of seconds, got {v:?}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("taskcast token: unexpected argument {flag:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret = match &config.jwt_secret {
        Some(secret) if !config.jwt_secret_generated => secret,
        _ => {
            eprintln!(
                "taskcast token: JWT_SECRET is not set (in the environment or .env): a token needs the server's secret \
                 (JWKS tokens come from your app, e.g. BetterAuth's /api/auth/token)"
            );
            return ExitCode::from(2);
        }
    };
    println!("{}", auth::mint(secret.expose(), &sub, ttl));
    ExitCode::SUCCESS
}

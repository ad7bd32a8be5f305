//! taskcast: a real-time broadcast server for task-management apps.
//!
//! A Server Action posts `{"type": T, "data": D}` to `/api/broadcast`; every
//! browser tab connected to `/ws` receives `{"type": T, "payload": D}`.
//!
//! # Layout
//! - [`server`]: the event loop — one thread, one mio `Poll`, every socket
//!   in a `Slab`; accept, read, timers, flush. Start here. Its submodules
//!   carry out what happens to one connection: `conn` (the table entry and
//!   its phases), `http_conn` (requests, upgrade), `ws_conn` (frames, client
//!   messages, pings, the close handshake), `fanout` (broadcasts); and
//!   what concerns the whole server: `drain` (signals, the staggered drain
//!   on SIGTERM, the final shutdown), `scrape` (`GET /metrics`).
//! - [`metrics`]: every Prometheus metric family, and encoding a scrape.
//! - [`limits`]: every limit and rate decision (connections per server and
//!   per address, HTTP connections per address, failed authentications per
//!   address, client frame rate, per-turn budgets, broadcast rate).
//! - [`api`]: routing decisions for each HTTP request (pure, no I/O).
//! - [`http`]: request heads (httparse) and responses.
//! - [`proxies`]: TRUSTED_PROXIES, and the client address X-Forwarded-For gives.
//! - [`refusals`]: refusals logged for the operator (why, and the offending
//!   value), at most one line per reason per 10 s.
//! - [`ws`]: the 101 handshake, per-client WebSocket state, client messages.
//! - [`close`]: every close code we send, and why (one place).
//! - [`frame_meter`]: every frame a client sends, counted before tungstenite
//!   parses it (rate, fragments, the per-turn budget).
//! - [`broadcast`]: validating a broadcast (to everyone or to channels) and
//!   framing it once.
//! - [`channels`]: channel names, who may join which channel, and the JSON
//!   of the channel protocol's answers (pure).
//! - [`control`]: the server API (unsubscribe, disconnect, revoke, a
//!   channel's position and history): request bodies, the denials and
//!   revocations tokens are checked against, and the idempotency cache
//!   (pure; the loop's side is `server::control`).
//! - [`hub`]: channel state — subscribers per channel, offsets and epochs,
//!   bounded history for replay after a reconnect; [`name_index`] finds a
//!   channel by name in 8 bytes per channel.
//! - [`subscription`]: one connection's subscription to a channel — joining
//!   or joined at a position — and the rule that a message reaches it only
//!   if it is exactly the next offset.
//! - [`outqueue`]: a connection's pending output, written with one writev.
//! - [`timers`]: connection deadlines in an indexed min-heap, one entry per
//!   connection (pings, timeouts).
//! - [`compact`]: 8-byte moments and 16-byte addresses for per-connection state.
//! - [`auth`]: JWT verification (which key checks which token) and minting.
//! - [`jwks`]: the front end's public keys (JWKS_URL / JWKS_FILE), refreshed
//!   by one helper thread so the loop never waits on a fetch, with its
//!   health; [`jwks::keyset`] parses a JWK Set, [`jwks::fetch`] gets one
//!   (ureq: http or https) and merges the sources.
//! - [`cluster`]: cluster mode — the link to Redis (publish, history,
//!   pub/sub) on two helper threads, talking to the loop over channels.
//! - [`config`]: environment variables, validated at start-up.
//! - [`demo`]: the development-mode demo page at `/` (embedded; 404 in production).
//! - [`logs`]: the log format (env_logger text, or JSON lines).
//! - [`sys`]: OS calls std lacks: open-file limit, listen backlog,
//!   socket writes with send/sendmsg, randomness.

pub mod api;
pub mod auth;
pub mod broadcast;
pub mod channels;
pub mod close;
pub mod cluster;
pub mod compact;
pub mod config;
pub mod control;
pub mod demo;
pub mod frame_meter;
pub mod http;
pub mod hub;
pub mod jwks;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod name_index;
pub mod outqueue;
pub mod proxies;
pub mod refusals;
pub mod server;
pub mod subscription;
pub mod sys;
pub mod timers;
pub mod ws;

pub use config::Config;
pub use server::{Server, ShutdownHandle};

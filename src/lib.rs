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
//!   messages, pings, the close handshake), `fanout` (broadcasts).
//! - [`limits`]: every limit and rate decision (connections per server and
//!   per address, HTTP connections per address, failed authentications per
//!   address, client frame rate, per-turn budgets, broadcast rate).
//! - [`api`]: routing decisions for each HTTP request (pure, no I/O).
//! - [`http`]: request heads (httparse) and responses.
//! - [`proxies`]: TRUSTED_PROXIES, and the client address X-Forwarded-For gives.
//! - [`ws`]: the 101 handshake, per-client WebSocket state, client messages,
//!   and every close code we send.
//! - [`frame_meter`]: every frame a client sends, counted before tungstenite
//!   parses it (rate, fragments, the per-turn budget).
//! - [`broadcast`]: validating a broadcast and framing it once.
//! - [`outqueue`]: a connection's pending output, written with one writev.
//! - [`timers`]: connection deadlines in an indexed min-heap, one entry per
//!   connection (pings, timeouts).
//! - [`auth`]: JWT verification (which key checks which token) and minting.
//! - [`jwks`]: the front end's public keys (JWKS_URL / JWKS_FILE), parsed,
//!   and refreshed by one helper thread so the loop never waits on a fetch.
//! - [`config`]: environment variables, validated at start-up.
//! - [`sys`]: OS calls std lacks: open-file limit, listen backlog,
//!   socket writes with send/sendmsg, randomness.

pub mod api;
pub mod auth;
pub mod broadcast;
pub mod config;
pub mod frame_meter;
pub mod http;
pub mod jwks;
pub mod limits;
pub mod outqueue;
pub mod proxies;
pub mod server;
pub mod sys;
pub mod timers;
pub mod ws;

pub use config::Config;
pub use server::{Server, ShutdownHandle};

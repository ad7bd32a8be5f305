//! One entry of the connection table: the socket, its pending output, and
//! the phase of its life (HTTP requests → WebSocket → closing).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use log::debug;
use mio::net::TcpStream;

use crate::compact::PackedAddr;
use crate::http::Head;
use crate::outqueue::OutQueue;
use crate::ws::{Protocol, Reason, Wire, WsConn};

/// One accepted socket.
pub(super) struct Conn {
    /// Unique for the server's lifetime: slab keys are reused, so what
    /// waits on a connection (a Redis answer, a drain slice) carries this
    /// to tell it from a later one at the same key.
    pub id: u64,
    pub stream: TcpStream,
    /// Already listed in `Server::dirty` for this turn's flush.
    pub dirty: bool,
    /// Already listed in `Server::deferred` (broadcast frames only).
    pub deferred: bool,
    /// 18 bytes, packed with the fields above into one 32-byte head (so a
    /// flag that only WebSockets need lives in `WsConn`: see
    /// [`Conn::corked`]).
    pub peer: PackedAddr,
    pub out: OutQueue,
    pub phase: Phase,
}

/// A connection's life: HTTP requests, maybe an upgrade, then closing.
/// (Its deadline is its entry in `Server::timers`.)
pub(super) enum Phase {
    Http(HttpConn),
    /// Held inline: nearly every connection is one, and an idle one is
    /// small (see [`WsConn`]).
    Ws(WsConn),
    /// Sending the last queued bytes, then FIN, then discarding input until
    /// the peer closes (closing with unread input would send RST and could
    /// destroy our last response before the peer reads it).
    Closing {
        fin_sent: bool,
        /// As in [`HttpConn::http_ip`], for a connection that never upgraded.
        http_ip: Option<IpAddr>,
    },
}

impl Phase {
    /// The address this connection counts against in
    /// MAX_HTTP_CONNECTIONS_PER_IP, if it does.
    pub fn http_ip(&self) -> Option<IpAddr> {
        match self {
            Phase::Http(h) => h.http_ip,
            Phase::Closing { http_ip, .. } => *http_ip,
            Phase::Ws(_) => None,
        }
    }
}

#[derive(Default)]
pub(super) struct HttpConn {
    /// Bytes received; `buf[consumed..]` is not yet handled.
    pub buf: Vec<u8>,
    /// Requests handled from the front of `buf`. Compacted once per read,
    /// not per request: pipelined requests would otherwise cost a memmove
    /// of the whole buffer each.
    pub consumed: usize,
    /// A parsed head whose body is still arriving (boxed: keeps every
    /// slab entry small).
    pub head: Option<Box<Head>>,
    /// Parsing stopped until the client reads its responses.
    pub paused: bool,
    /// A publish is waiting for Redis (cluster mode); requests behind it
    /// wait for its answer.
    pub parked: bool,
    /// `head` passed `api::admit` while its body was arriving (its
    /// credential is not checked again when the body is complete).
    pub admitted: bool,
    /// The address this connection counts against in
    /// MAX_HTTP_CONNECTIONS_PER_IP, until it upgrades or closes (`None`:
    /// not counted — from a trusted proxy, or refused).
    pub http_ip: Option<IpAddr>,
}

impl HttpConn {
    /// Is the request at the front of the buffer a HEAD (whose answer
    /// must carry no body, RFC 9110 §9.3.2), even if it never parsed?
    pub fn pending_is_head(&self) -> bool {
        self.buf[self.consumed..].starts_with(b"HEAD ")
    }

    /// No request has started arriving: an idle keep-alive connection.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.head.is_none() && !self.parked
    }
}

impl Conn {
    /// Output held back until the user channel's position is known (see
    /// [`WsConn::corked`]); only a WebSocket is ever corked.
    pub fn corked(&self) -> bool {
        matches!(&self.phase, Phase::Ws(ws) if ws.corked)
    }

    pub fn set_corked(&mut self, on: bool) {
        if let Phase::Ws(ws) = &mut self.phase {
            ws.corked = on;
        }
    }

    pub fn new(id: u64, stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            id,
            stream,
            dirty: false,
            deferred: false,
            peer: peer.into(),
            out: OutQueue::default(),
            phase: Phase::Http(HttpConn::default()),
        }
    }

    /// The WebSocket state and the wire tungstenite reads and writes
    /// through (reads from the socket, writes into our queue), borrowed
    /// together. `None` unless this is an open WebSocket.
    pub fn ws_wire(&mut self) -> Option<(&mut WsConn, Wire<'_, TcpStream>)> {
        match &mut self.phase {
            Phase::Ws(ws) => Some((ws, Wire { sock: &mut self.stream, out: &mut self.out, meter: None })),
            _ => None,
        }
    }

    /// The WebSocket state, if this is one.
    pub fn ws(&self) -> Option<&WsConn> {
        match &self.phase {
            Phase::Ws(ws) => Some(ws),
            _ => None,
        }
    }

    /// Queues a close frame with `reason` (tungstenite tracks the close
    /// state: the connection holds a [`crate::ws::Reading`] from here on).
    pub fn send_close(&mut self, reason: Reason, protocol: &mut Protocol) {
        let peer = self.peer;
        if let Some((ws, mut wire)) = self.ws_wire() {
            debug!("{peer} ({:?}) closing: {} {}", ws.sub, reason.code(), reason.text());
            let ctx = &mut protocol.reading(ws, Instant::now()).ctx;
            // A Pong tungstenite still owes goes first: nothing may follow our
            // close frame (RFC 6455 §5.5.1).
            let _ = ctx.flush(&mut wire);
            let _ = ctx.close(&mut wire, Some(reason.close_frame()));
        }
    }
}

//! The few OS calls std does not wrap: the open-file limit and randomness.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

/// The soft RLIMIT_NOFILE, after raising it to the hard limit (as Go's
/// runtime does at start): every WebSocket client costs one fd.
pub fn open_file_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX).min(1 << 20)
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("/dev/urandom is readable");
}

/// A non-blocking listener on `addr` with the given accept backlog.
/// With `reuse_port`, SO_REUSEPORT: several processes may listen on the
/// same port and the kernel spreads new connections over them (REUSE_PORT).
/// socket2 sets options before bind, which std cannot, and passes the
/// backlog (std uses 128).
pub fn listen(addr: SocketAddr, backlog: i32, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std does: a restarted server can bind while old connections linger.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A socket written with `send`/`sendmsg` rather than `write`/`writev`:
/// the same bytes, minus the file-layer work (position lock, iovec import
/// through the VFS) that a socket does not need.
pub struct Send<'a, S: AsRawFd>(pub &'a S);

impl<S: AsRawFd> std::io::Write for Send<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: a valid fd and a buffer of the given length.
        let n = unsafe {
            libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec; msghdr is zeroed
        // except for the iovec array, which outlives the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(self.0.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

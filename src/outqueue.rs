//! A connection's bytes waiting for the socket.
//!
//! Broadcast frames are shared (`Rc<[u8]>`: one allocation per broadcast,
//! a refcount bump per client); responses and control frames are owned.
//! [`OutQueue::write_to`] sends as many queued chunks as the socket takes
//! in one vectored write per call, so several broadcasts that arrived in
//! one loop turn leave in one syscall.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Chunks handed to one `writev` at most (Linux IOV_MAX is 1024; past a few
/// dozen the gain is nil and the slice array stays on the stack).
const MAX_IOV: usize = 64;

/// Queue slots kept once the queue is empty again (after a burst).
const KEEP_CAPACITY: usize = 16;

/// One queued piece of output.
#[derive(Debug)]
enum Chunk {
    /// A broadcast frame shared by every recipient.
    Shared(Rc<[u8]>),
    /// Bytes only this connection sends (HTTP responses, pongs, close frames).
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(b) => b,
        }
    }
}

/// What [`OutQueue::write_to`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is in the kernel.
    Done,
    /// The socket is full; wait for the next writable event.
    Blocked,
}

/// The bounded-by-policy FIFO of output for one connection. The owner
/// decides the bound (see `SEND_QUEUE_LIMIT`); this type only keeps counts.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written (a partial write).
    front_written: usize,
    /// Unwritten bytes in all chunks.
    bytes: usize,
}

impl OutQueue {
    /// Queues a shared broadcast frame (no copy).
    pub fn push_shared(&mut self, frame: Rc<[u8]>) {
        self.bytes += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Queues bytes this connection owns.
    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.bytes += bytes.len();
        self.chunks.push_back(Chunk::Owned(bytes));
    }

    /// Chunks (messages) not yet fully written.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Unwritten bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops every chunk not yet started, keeping a partly written front
    /// chunk so the byte stream stays well-framed. Used before a close frame
    /// is queued for a client too slow to read what is already waiting.
    pub fn drop_unstarted(&mut self) {
        let keep = usize::from(self.front_written > 0).min(self.chunks.len());
        self.chunks.truncate(keep);
        self.bytes = self.chunks.front().map_or(0, |c| c.bytes().len() - self.front_written);
    }

    /// Writes queued chunks until the queue is empty or `w` would block.
    /// Other errors (reset, broken pipe) are returned: the connection is dead.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<Flush> {
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = chunk.bytes();
                slices[i] = IoSlice::new(if i == 0 { &b[self.front_written..] } else { b });
                n += 1;
            }
            let written = match if n == 1 { w.write(&slices[0]) } else { w.write_vectored(&slices[..n]) } {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(written);
        }
        // A burst left a large ring behind; idle clients should not keep it.
        if self.chunks.capacity() > KEEP_CAPACITY {
            self.chunks = VecDeque::new();
        }
        Ok(Flush::Done)
    }

    /// Advances past `n` written bytes, popping finished chunks.
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let left = self.chunks[0].bytes().len() - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.front_written = 0;
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then would block
    /// once `budget` runs out: exercises partial writes.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.cap).min(self.budget);
            self.got.extend_from_slice(&b[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_counts() {
        let mut q = OutQueue::default();
        let shared: Rc<[u8]> = Rc::from(&b"hello "[..]);
        q.push_shared(shared.clone());
        q.push_owned(b"world".to_vec());
        q.push_shared(shared);
        assert_eq!((q.len(), q.bytes()), (3, 17));

        let mut w = Trickle { got: vec![], cap: 4, budget: 7 };
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Blocked);
        assert_eq!(w.got, b"hello w");
        assert_eq!((q.len(), q.bytes()), (2, 10));

        w.budget = 100;
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Done);
        assert_eq!(w.got, b"hello worldhello ");
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn drop_unstarted_keeps_partial_front() {
        let mut q = OutQueue::default();
        q.push_owned(b"abcdef".to_vec());
        q.push_owned(b"ghi".to_vec());
        let mut w = Trickle { got: vec![], cap: 2, budget: 2 };
        q.write_to(&mut w).unwrap();
        q.drop_unstarted();
        assert_eq!((q.len(), q.bytes()), (1, 4));
        q.push_owned(b"X".to_vec());
        w.budget = 100;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"abcdefX");

        let mut q = OutQueue::default();
        q.push_owned(b"abc".to_vec());
        q.drop_unstarted();
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn many_chunks_span_several_writev_calls() {
        let mut q = OutQueue::default();
        for i in 0..200u8 {
            q.push_owned(vec![i]);
        }
        let mut w = Trickle { got: vec![], cap: usize::MAX, budget: usize::MAX };
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Done);
        assert_eq!(w.got, (0..200u8).collect::<Vec<_>>());
    }
}

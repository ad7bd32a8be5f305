//! A connection's bytes waiting for the socket.
//!
//! Broadcast frames are shared (`Rc<[u8]>`: one allocation per broadcast,
//! a refcount bump per client); responses and control frames are copied
//! into an `Rc<[u8]>` of their own, so every chunk is one 16-byte pointer
//! (an enum of shared and owned chunks took 24, in every connection).
//! [`OutQueue::write_to`] sends as many queued chunks as the socket takes
//! in one vectored write per call, so several broadcasts that arrived in
//! one loop turn leave in one syscall.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Chunks handed to one `writev` at most (Linux IOV_MAX is 1024; past a few
/// dozen the gain is nil and the slice array stays on the stack).
const MAX_IOV: usize = 64;

/// Queue slots kept once the queue is empty again (after a burst; see
/// [`OutQueue::release_idle`] for an idle connection).
const KEEP_CAPACITY: usize = 16;

/// One queued piece of output: a broadcast frame shared by every
/// recipient, or bytes only this connection sends (HTTP responses, pongs,
/// close frames).
#[derive(Debug)]
struct Chunk(Rc<[u8]>);

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.0
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
///
/// A connection mostly has one whole chunk waiting at a time (a broadcast,
/// a pong, a response): that chunk is held inline, so it takes no
/// allocation, and an idle connection holds 24 bytes and nothing on the
/// heap. A second chunk, or a partial write, allocates the [`Backlog`].
#[derive(Debug, Default)]
pub struct OutQueue {
    /// The oldest chunk (`None`: the queue is empty).
    front: Option<Chunk>,
    /// The rest of the queue's state (`None`: nothing but `front`, not
    /// started). Kept between the writes of a busy connection.
    more: Option<Box<Backlog>>,
}

/// What a queue holds past one whole chunk.
#[derive(Debug, Default)]
struct Backlog {
    /// The chunks after the front one, oldest first.
    rest: VecDeque<Chunk>,
    /// Bytes of the front chunk already written (a partial write).
    front_written: usize,
    /// Bytes in `rest`.
    rest_bytes: usize,
}

impl OutQueue {
    fn push(&mut self, chunk: Chunk) {
        if self.front.is_none() {
            self.front = Some(chunk);
        } else {
            let more = self.more.get_or_insert_default();
            more.rest_bytes += chunk.bytes().len();
            more.rest.push_back(chunk);
        }
    }

    /// Queues a shared broadcast frame (no copy).
    pub fn push_shared(&mut self, frame: Rc<[u8]>) {
        self.push(Chunk(frame));
    }

    /// Queues bytes only this connection sends (copied once).
    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        self.push_copy(&bytes);
    }

    /// Queues a copy of `bytes`.
    pub fn push_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.push(Chunk(Rc::from(bytes)));
    }

    /// Chunks (messages) not yet fully written.
    pub fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.more.as_ref().map_or(0, |m| m.rest.len())
    }

    pub fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    fn front_written(&self) -> usize {
        self.more.as_ref().map_or(0, |m| m.front_written)
    }

    /// Unwritten bytes.
    pub fn bytes(&self) -> usize {
        let front = self.front.as_ref().map_or(0, |c| c.bytes().len() - self.front_written());
        front + self.more.as_ref().map_or(0, |m| m.rest_bytes)
    }

    /// Drops every chunk not yet started, keeping a partly written front
    /// chunk so the byte stream stays well-framed. Used before a close frame
    /// is queued for a client too slow to read what is already waiting.
    pub fn drop_unstarted(&mut self) {
        if self.front_written() == 0 {
            self.front = None;
        }
        if let Some(m) = self.more.as_mut() {
            m.rest.clear();
            m.rest_bytes = 0;
        }
    }

    /// Frees the backlog's ring an earlier burst left, if nothing is
    /// queued: for a connection that has been idle a while (it is kept
    /// between the writes of a busy one).
    pub fn release_idle(&mut self) {
        if self.is_empty() {
            self.more = None;
        }
    }

    /// Writes queued chunks until the queue is empty or `w` would block.
    /// Other errors (reset, broken pipe) are returned: the connection is dead.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<Flush> {
        while let Some(front) = &self.front {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            slices[0] = IoSlice::new(&front.bytes()[self.front_written()..]);
            let mut n = 1;
            if let Some(m) = &self.more {
                for chunk in m.rest.iter().take(MAX_IOV - 1) {
                    slices[n] = IoSlice::new(chunk.bytes());
                    n += 1;
                }
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
        if self.more.as_ref().is_some_and(|m| m.rest.capacity() > KEEP_CAPACITY) {
            self.more = None;
        }
        Ok(Flush::Done)
    }

    /// Advances past `n` written bytes, popping finished chunks.
    fn consume(&mut self, mut n: usize) {
        if n == self.bytes() {
            // Everything went (the usual case): no chunk-by-chunk popping.
            self.front = None;
            if let Some(m) = self.more.as_mut() {
                m.rest.clear();
                m.rest_bytes = 0;
                m.front_written = 0;
            }
            return;
        }
        while n > 0 {
            let left = self.front.as_ref().map_or(0, |c| c.bytes().len()) - self.front_written();
            if n < left {
                self.more.get_or_insert_default().front_written += n;
                return;
            }
            n -= left;
            self.front = None;
            if let Some(m) = self.more.as_mut() {
                m.front_written = 0;
                self.front = m.rest.pop_front();
                if let Some(c) = &self.front {
                    m.rest_bytes -= c.bytes().len();
                }
            }
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
    fn one_chunk_needs_no_ring_and_an_idle_queue_gives_its_ring_back() {
        let mut q = OutQueue::default();
        q.push_owned(b"ab".to_vec());
        assert!(q.more.is_none(), "the front chunk is inline");
        q.push_owned(b"cd".to_vec());
        q.push_owned(b"ef".to_vec());
        assert_eq!((q.len(), q.bytes()), (3, 6));
        let mut w = Trickle { got: vec![], cap: 3, budget: 3 };
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Blocked);
        q.release_idle();
        assert!(q.more.is_some(), "kept while output waits");
        w.budget = 100;
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Done);
        assert_eq!(w.got, b"abcdef");
        assert!(q.more.is_some(), "kept between a busy connection's writes");
        q.release_idle();
        assert!(q.more.is_none());
        q.push_shared(Rc::from(&b"g"[..]));
        assert!(q.more.is_none() && q.len() == 1);
    }

    #[test]
    fn agrees_with_a_byte_model_under_random_pushes_and_partial_writes() {
        // The model: chunks still queued (whole, oldest first) and how much
        // of the first one was written.
        let mut q = OutQueue::default();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut model_written = 0;
        let mut w = Trickle { got: vec![], cap: 1, budget: 0 };
        let mut want: Vec<u8> = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut tag = 0u8;
        for _ in 0..20_000 {
            match next(10) {
                0..=4 => {
                    tag = tag.wrapping_add(1);
                    let chunk = vec![tag; 1 + next(40) as usize];
                    if next(2) == 0 {
                        q.push_shared(Rc::from(&chunk[..]));
                    } else {
                        q.push_owned(chunk.clone());
                    }
                    model.push_back(chunk);
                }
                5..=8 => {
                    w.cap = 1 + next(60) as usize;
                    w.budget = next(120) as usize;
                    let before = w.got.len();
                    let r = q.write_to(&mut w).unwrap();
                    let mut n = w.got.len() - before;
                    while n > 0 {
                        let left = model[0].len() - model_written;
                        let k = n.min(left);
                        want.extend_from_slice(&model[0][model_written..model_written + k]);
                        model_written += k;
                        n -= k;
                        if model_written == model[0].len() {
                            model.pop_front();
                            model_written = 0;
                        }
                    }
                    assert_eq!(r == Flush::Done, model.is_empty());
                }
                _ => {
                    q.drop_unstarted();
                    let keep = usize::from(model_written > 0).min(model.len());
                    model.truncate(keep);
                    if keep == 0 {
                        model_written = 0;
                    }
                }
            }
            assert_eq!(w.got, want);
            assert_eq!(q.len(), model.len());
            assert_eq!(q.bytes(), model.iter().map(Vec::len).sum::<usize>() - model_written);
            if next(50) == 0 {
                q.release_idle();
            }
        }
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

//! A connection whose first bytes were already read (to check the first request head):
//! they are read again before the rest of the stream.
//!
//! It also bounds how long a write may wait for a client that stopped reading: a client
//! that accepts no byte for `STREAM_IDLE_TIMEOUT` would otherwise pin its upstream
//! generation and connection for as long as it likes. The write fails, hyper closes the
//! connection, and dropping the response body closes the upstream request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `stream`, with `head` in front of whatever it reads next.
pub struct Replay<S> {
    head: Bytes,
    stream: S,
    /// How long a write may stay blocked (zero: for ever).
    write_limit: Duration,
    /// Armed while a write is blocked; made on the first stall only.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl<S> Replay<S> {
    /// Reads `head` first, then `stream`; a write blocked for `write_limit` fails.
    pub fn new(head: Bytes, stream: S, write_limit: Duration) -> Self {
        Self {
            head,
            stream,
            write_limit,
            stall: None,
            stalled: false,
        }
    }

    /// Called with the inner write's result: times a blocked write out after `write_limit`.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() || self.write_limit.is_zero() {
            self.stalled = false;
            return result;
        }
        let Some(deadline) = Instant::now().checked_add(self.write_limit) else {
            return result;
        };
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.stalled {
            stall.as_mut().reset(deadline);
            self.stalled = true;
        }
        if stall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no byte for STREAM_IDLE_TIMEOUT",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.head.len().min(buf.remaining());
        buf.put_slice(&self.head[..n]);
        if n == self.head.len() {
            // Free the replayed bytes now rather than when the connection ends.
            self.head = Bytes::new();
        } else {
            self.head.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

//! The proxy's own HTTP/1.1 client: one request at a time on a connection, written by the
//! task that sends it and read by the task that reads its answer, with no buffer kept
//! between reads.
//!
//! hyper's `client::conn::http1` keeps, per connection, a task, a dispatch channel and two
//! 8 KiB buffers for its whole life: 17 KB of RSS per held stream, measured (9,900 held
//! streams in 314 MB over HTTP/1.1 against 146 MB over one shared HTTP/2 connection,
//! docs/PERFORMANCE.md). Here a read goes into a buffer on the stack and the body's bytes
//! are copied out of it exactly sized, so a connection waiting for its next chunk holds
//! nothing but its socket and a few words of framing state.

mod framing;
mod head;
#[cfg(test)]
mod tests;

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::HeaderValue;
use hyper::http::request;
use hyper::rt::{Read, ReadBuf, Write};
use hyper::{Response, StatusCode};
use hyper_rustls::MaybeHttpsStream;
use socket2::SockRef;

use super::idle::{self, Idle};
use super::{BoxError, Io};
use crate::http1_rules::MAX_HEAD_BYTES;
use framing::Framing;

/// One read's buffer, on the stack of the task that reads.
const READ_SIZE: usize = 16 * 1024;

/// What came of the body bytes read with an answer's head.
type Pending = Result<Bytes, framing::FramingError>;

/// An open HTTP/1.1 connection, idle or lent to one request.
pub(super) struct Connection {
    /// Boxed: a TLS stream is about 1 KB, which would size every answer's body.
    io: Box<Io>,
}

/// A request that failed; `unsent` when not one of its bytes was written.
pub(super) struct SendError {
    pub(super) unsent: bool,
    pub(super) error: BoxError,
}

impl Connection {
    pub(super) fn new(io: Io) -> Connection {
        Connection { io: Box::new(io) }
    }

    /// True unless the server closed the connection while it waited, or sent something
    /// nobody asked for. tokio learns of a close only when its reactor next runs (on a
    /// busy worker, every few dozen tasks); `ask_socket` also asks the socket itself, a
    /// system call, for a connection idle long enough that a server's idle timeout may
    /// have closed it just now.
    pub(super) fn is_open(&mut self, ask_socket: bool) -> bool {
        let mut scratch = [MaybeUninit::<u8>::uninit(); 64];
        let mut buffer = ReadBuf::uninit(&mut scratch);
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.io)
            .poll_read(&mut cx, buffer.unfilled())
            .is_ready()
        {
            return false;
        }
        if !ask_socket {
            return true;
        }
        let (tcp, tls) = match &*self.io {
            MaybeHttpsStream::Http(tcp) => (tcp.inner(), false),
            MaybeHttpsStream::Https(tls) => (tls.inner().get_ref().0.inner().inner(), true),
        };
        match SockRef::from(tcp).peek(&mut [MaybeUninit::uninit(); 1]) {
            Ok(0) => false,
            // A TLS record (a session ticket) is read with the answer; plain bytes nobody
            // asked for mean the connection is out of step.
            Ok(_) => tls,
            Err(err) => err.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Writes the request and reads its answer's head; the body is read from the answer.
    pub(super) async fn send(
        mut self,
        parts: &request::Parts,
        host: &HeaderValue,
        body: &Bytes,
        idle: &Arc<Mutex<Idle>>,
    ) -> Result<Response<Reader>, SendError> {
        let head = head::encode_request(parts, host, body.len());
        let mut written = 0;
        std::future::poll_fn(|cx| self.poll_write_all(cx, &[&head, body], &mut written))
            .await
            .map_err(|error| SendError {
                unsent: written == 0,
                error: error.into(),
            })?;
        drop(head);
        let sent = |error: BoxError| SendError {
            unsent: false,
            error,
        };
        let mut partial = Vec::new();
        let (head, pending) =
            std::future::poll_fn(|cx| self.poll_head(cx, &parts.method, &mut partial))
                .await
                .map_err(sent)?;
        let reader = Reader {
            connection: Some(self),
            framing: head.framing,
            pending,
            keep_alive: head.keep_alive,
            idle: Arc::clone(idle),
        };
        Ok(Response::from_parts(head.parts, reader))
    }

    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        parts: &[&[u8]; 2],
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        let total = parts[0].len() + parts[1].len();
        while *written < total {
            let (first, second) = if *written < parts[0].len() {
                (&parts[0][*written..], parts[1])
            } else {
                (&parts[1][*written - parts[0].len()..], &[][..])
            };
            let slices = [IoSlice::new(first), IoSlice::new(second)];
            match ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => *written += n,
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads until an answer's final head is complete (informational 1xx heads are
    /// skipped); returns it with the body's bytes that came with it. `partial` keeps a
    /// head that one read did not complete.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &hyper::Method,
        partial: &mut Vec<u8>,
    ) -> Poll<Result<(head::Head, Option<Pending>), BoxError>> {
        loop {
            let mut scratch = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut buffer = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, buffer.unfilled()))?;
            if buffer.filled().is_empty() {
                return Poll::Ready(Err("the connection closed before the answer's head".into()));
            }
            let input: &[u8] = if partial.is_empty() {
                buffer.filled()
            } else {
                partial.extend_from_slice(buffer.filled());
                partial
            };
            let mut start = 0;
            while let Some((mut head, length)) = head::parse_response(&input[start..], method)? {
                start += length;
                // 100 Continue and 103 Early Hints come before the answer; 101 ends the
                // connection's HTTP (the proxy never asks for it, and refuses it).
                if head.parts.status.is_informational()
                    && head.parts.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                let rest = &input[start..];
                let mut data = Vec::new();
                // A framing error is the body's, met when it is read.
                let pending = match head.framing.decode(rest, &mut data) {
                    Ok(used) => {
                        head.keep_alive &= used == rest.len();
                        (!data.is_empty()).then(|| Ok(Bytes::from(data)))
                    }
                    Err(error) => Some(Err(error)),
                };
                return Poll::Ready(Ok((head, pending)));
            }
            let rest = input[start..].to_vec();
            if rest.len() > MAX_HEAD_BYTES {
                return Poll::Ready(Err(format!(
                    "an answer's head longer than {MAX_HEAD_BYTES} bytes"
                )
                .into()));
            }
            *partial = rest;
        }
    }
}

/// An HTTP/1.1 answer's body, read from its connection as the client takes it; the
/// connection goes back to its worker's idle list when the body has been read to its end.
pub struct Reader {
    /// `None` once given back, or closed.
    connection: Option<Connection>,
    framing: Framing,
    /// Body bytes read with the head (or the framing error they held), not yet taken.
    pending: Option<Pending>,
    keep_alive: bool,
    idle: Arc<Mutex<Idle>>,
}

impl Reader {
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.pending.take() {
            Some(Ok(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(error)) => {
                self.connection = None;
                return Poll::Ready(Some(Err(error.into())));
            }
            None => {}
        }
        loop {
            if self.framing.is_done() {
                self.give_back();
                return Poll::Ready(None);
            }
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let mut scratch = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let limit = self.framing.read_limit(READ_SIZE);
            let mut buffer = ReadBuf::uninit(&mut scratch[..limit]);
            let read = ready!(Pin::new(&mut connection.io).poll_read(cx, buffer.unfilled()));
            let failed = |reader: &mut Reader, error: BoxError| {
                reader.connection = None;
                Poll::Ready(Some(Err(error)))
            };
            if let Err(error) = read {
                return failed(self, error.into());
            }
            let input = buffer.filled();
            if input.is_empty() {
                if self.framing == Framing::UntilClose {
                    self.framing = Framing::Done;
                    self.connection = None;
                    return Poll::Ready(None);
                }
                return failed(self, "the connection closed before the answer's end".into());
            }
            let mut data = Vec::new();
            match self.framing.decode(input, &mut data) {
                Ok(used) => self.keep_alive &= used == input.len(),
                Err(error) => return failed(self, error.into()),
            }
            if !data.is_empty() {
                // Exactly sized, so `Bytes` takes the allocation as it is.
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
            }
        }
    }

    /// True when nothing is left to read: no bytes held, the framing at its end.
    pub(super) fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.framing.is_done()
    }

    /// The bytes left, when the answer said how many.
    pub(super) fn exact_len(&self) -> Option<u64> {
        let pending = match &self.pending {
            Some(Ok(bytes)) => bytes.len() as u64,
            _ => 0,
        };
        match self.framing {
            Framing::Length(left) => Some(pending + left),
            Framing::Done => Some(pending),
            _ => None,
        }
    }

    fn give_back(&mut self) {
        if let Some(connection) = self.connection.take() {
            if self.keep_alive {
                idle::give_back(&self.idle, connection);
            }
        }
    }
}

impl Drop for Reader {
    /// A body dropped already complete gives its connection back (hyper's server stops
    /// polling a body once it says it has ended); one dropped before its end closes it.
    fn drop(&mut self) {
        if self.is_end_stream() {
            self.give_back();
        }
    }
}

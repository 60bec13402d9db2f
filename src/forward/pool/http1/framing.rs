//! Where an HTTP/1.1 answer's body ends (RFC 9112 §6.3): a `Content-Length`, chunked
//! transfer coding, or the connection's close. A read's body bytes are copied once, out of
//! the buffer they were read into.

use std::fmt;

/// How the rest of an answer's body is delimited, and how far it has been read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the server closes the connection.
    UntilClose,
    /// The body has ended.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Chunked {
    /// In a chunk's size (hex digits seen so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension, or the whitespace before one, up to the line's end.
    Extension {
        size: u64,
    },
    /// The size line's CR was read; its LF is next.
    SizeLf {
        size: u64,
    },
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the empty line ending the body.
    LineStart,
    /// In a trailer field line (not kept: the proxy passes no trailers on).
    Trailer,
    TrailerLf,
    /// The final empty line's LF.
    EndLf,
    /// The body has ended (the caller turns this into [`Framing::Done`]).
    Ended,
}

/// A body that breaks the framing rules: the connection cannot be trusted any more.
#[derive(Debug, PartialEq, Eq)]
pub struct FramingError(&'static str);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid chunked body from upstream: {}", self.0)
    }
}

impl std::error::Error for FramingError {}

impl Framing {
    pub(super) fn is_done(&self) -> bool {
        *self == Framing::Done
    }

    /// How much to read next: never past a known length (the connection's next bytes
    /// would belong to no request).
    pub(super) fn read_limit(&self, buffer: usize) -> usize {
        match self {
            Framing::Length(left) => usize::try_from(*left).map_or(buffer, |left| left.min(buffer)),
            _ => buffer,
        }
    }

    /// Appends this answer's body bytes in `input` to `data`, reserving exactly what they
    /// need; returns how many of `input`'s bytes belong to the answer (any after them
    /// came unasked).
    pub(super) fn decode(
        &mut self,
        input: &[u8],
        data: &mut Vec<u8>,
    ) -> Result<usize, FramingError> {
        match self {
            Framing::Length(left) => {
                let taken = usize::try_from(*left).map_or(input.len(), |l| l.min(input.len()));
                *left -= taken as u64;
                if *left == 0 {
                    *self = Framing::Done;
                }
                data.reserve_exact(taken);
                data.extend_from_slice(&input[..taken]);
                Ok(taken)
            }
            Framing::UntilClose => {
                data.reserve_exact(input.len());
                data.extend_from_slice(input);
                Ok(input.len())
            }
            Framing::Done => Ok(0),
            Framing::Chunked(state) => {
                // The data's length first (the state is a few words), so that the bytes
                // are copied into one allocation of exactly their size.
                let mut length = 0;
                decode_chunked(&mut state.clone(), input, |run| length += run.len())?;
                data.reserve_exact(length);
                let used = decode_chunked(state, input, |run| data.extend_from_slice(run))?;
                if *state == Chunked::Ended {
                    *self = Framing::Done;
                }
                Ok(used)
            }
        }
    }
}

impl Chunked {
    pub(super) fn start() -> Chunked {
        Chunked::Size { size: 0, digits: 0 }
    }
}

/// Walks `input` from `state`, handing each run of chunk data to `data`; returns how many
/// bytes belong to the body.
fn decode_chunked(
    state: &mut Chunked,
    input: &[u8],
    mut data: impl FnMut(&[u8]),
) -> Result<usize, FramingError> {
    let mut read = 0;
    while read < input.len() && *state != Chunked::Ended {
        if let Chunked::Data(left) = state {
            let run =
                usize::try_from(*left).map_or(input.len() - read, |l| l.min(input.len() - read));
            data(&input[read..read + run]);
            read += run;
            *left -= run as u64;
            if *left == 0 {
                *state = Chunked::DataCr;
            }
            continue;
        }
        if let Some((next, used)) = whole_line(state, &input[read..]) {
            *state = next;
            read += used;
            continue;
        }
        let byte = input[read];
        read += 1;
        *state = next_state(state, byte)?;
    }
    Ok(read)
}

/// The usual framing, a whole size line without extension (`1a\r\n`) or the CRLF after a
/// chunk's data, stepped over at once: byte by byte, twice (the length first, then the
/// copy), it was a seventh of the user-space instructions a forwarded SSE chunk costs
/// (callgrind). Anything else (a line cut by a read, an extension, an error) is left to
/// [`next_state`].
fn whole_line(state: &Chunked, input: &[u8]) -> Option<(Chunked, usize)> {
    match state {
        Chunked::DataCr => input.starts_with(b"\r\n").then_some((Chunked::start(), 2)),
        Chunked::Size { digits: 0, .. } => {
            let digits = input
                .iter()
                .take(16)
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            if digits == 0 || input.get(digits..digits + 2) != Some(b"\r\n") {
                return None;
            }
            let size = input[..digits]
                .iter()
                .fold(0u64, |size, &digit| size << 4 | hex_value(digit));
            match size {
                0 => Some((Chunked::LineStart, digits + 2)),
                u64::MAX => None,
                size => Some((Chunked::Data(size), digits + 2)),
            }
        }
        _ => None,
    }
}

/// The value of a hex digit (the caller has checked that it is one).
fn hex_value(digit: u8) -> u64 {
    u64::from((digit as char).to_digit(16).unwrap_or(0))
}

/// One framing byte (anything but chunk data) read in `state`.
fn next_state(state: &Chunked, byte: u8) -> Result<Chunked, FramingError> {
    Ok(match (state, byte) {
        (&Chunked::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
            if digits == 16 {
                return Err(FramingError("a chunk size too large"));
            }
            Chunked::Size {
                size: size << 4 | hex_value(byte),
                digits: digits + 1,
            }
        }
        (Chunked::Size { digits: 0, .. }, _) => return Err(FramingError("a chunk without a size")),
        (&Chunked::Size { size, .. }, b';' | b' ' | b'\t') => Chunked::Extension { size },
        (&Chunked::Size { size, .. } | &Chunked::Extension { size }, b'\r') => {
            Chunked::SizeLf { size }
        }
        (Chunked::Size { .. }, _) => return Err(FramingError("a chunk size that is not hex")),
        (&(Chunked::Extension { size } | Chunked::SizeLf { size }), b'\n') => {
            if size == 0 {
                Chunked::LineStart
            } else if size == u64::MAX {
                return Err(FramingError("a chunk size too large"));
            } else {
                Chunked::Data(size)
            }
        }
        (&Chunked::Extension { size }, _) => Chunked::Extension { size },
        (Chunked::DataCr, b'\r') => Chunked::DataLf,
        (Chunked::DataLf, b'\n') => Chunked::start(),
        (Chunked::LineStart, b'\r') => Chunked::EndLf,
        (Chunked::LineStart | Chunked::Trailer, b'\n') => {
            return Err(FramingError("a bare LF in the trailer section"))
        }
        (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
        (Chunked::LineStart | Chunked::Trailer, _) => Chunked::Trailer,
        (Chunked::TrailerLf, b'\n') => Chunked::LineStart,
        (Chunked::EndLf, b'\n') => Chunked::Ended,
        (
            Chunked::SizeLf { .. }
            | Chunked::DataCr
            | Chunked::DataLf
            | Chunked::TrailerLf
            | Chunked::EndLf,
            _,
        ) => return Err(FramingError("a line that does not end in CRLF")),
        // Chunk data is copied, not stepped through, and nothing is read after the end.
        (Chunked::Data(_) | Chunked::Ended, _) => {
            return Err(FramingError("bytes after the body's end"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; returns the body and the bytes left over.
    fn decode_in_steps(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, usize), FramingError> {
        let mut body = Vec::new();
        let mut unused = 0;
        for piece in wire.chunks(step) {
            unused += piece.len() - framing.decode(piece, &mut body)?;
        }
        assert!(framing.is_done(), "the body ended");
        Ok((body, unused))
    }

    #[test]
    fn chunked_bodies_decode_the_same_whatever_pieces_they_arrive_in() {
        let wire = b"5\r\nhello\r\n7;name=\"v\"\r\n, world\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\na\r\n0123456789\r\nB\r\nABCDEFGHIJK\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..=wire.len() {
            let (body, unused) =
                decode_in_steps(Framing::Chunked(Chunked::start()), wire, step).unwrap();
            assert_eq!(
                body, b"hello, worldabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJK",
                "step {step}"
            );
            assert_eq!(
                unused, 4,
                "the bytes after the body are not taken (step {step})"
            );
        }
    }

    #[test]
    fn a_read_of_several_chunks_is_copied_into_one_allocation_of_their_size() {
        let mut framing = Framing::Chunked(Chunked::start());
        let mut data = Vec::new();
        let wire = b"5\r\nhello\r\n3\r\nabc\r\n2";
        assert_eq!(framing.decode(wire, &mut data), Ok(wire.len()));
        assert_eq!((data.as_slice(), data.capacity()), (&b"helloabc"[..], 8));
    }

    #[test]
    fn an_empty_chunked_body_ends_at_its_last_chunk() {
        let (body, unused) =
            decode_in_steps(Framing::Chunked(Chunked::start()), b"0\r\n\r\n", 1).unwrap();
        assert!(body.is_empty());
        assert_eq!(unused, 0);
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"ffffffffffffffff\r\n",
            b"0\r\nx: 1\n\r\n",
        ] {
            let mut framing = Framing::Chunked(Chunked::start());
            assert!(framing.decode(wire, &mut Vec::new()).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn a_length_takes_no_more_than_its_length() {
        let (body, unused) = decode_in_steps(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(unused, 0);
        let mut framing = Framing::Length(3);
        assert_eq!(framing.read_limit(16_384), 3);
        let mut data = Vec::new();
        assert_eq!(framing.decode(b"abcdef", &mut data), Ok(3));
        assert_eq!((data.as_slice(), data.capacity()), (&b"abc"[..], 3));
        assert!(framing.is_done());
    }
}

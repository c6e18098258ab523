//! The Redis wire format (RESP2) for `txsession.redis`, through the `redis-protocol` crate's
//! sans-IO encoder and decoder: `encode_commands` turns commands into the bytes to send, and a
//! `RespDecoder` turns received bytes into replies, so no parsing runs in Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};
use pyo3::{PyTraverseError, PyVisit};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use crate::gil::GilCell;
use crate::traverse_fields;

/// Each command, a sequence of `bytes` arguments, as a RESP array of bulk strings, one after
/// the other in one buffer (a pipeline).
#[pyfunction]
pub fn encode_commands<'py>(
    py: Python<'py>,
    commands: Vec<Vec<Vec<u8>>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::new();
    for command in &commands {
        let args: Vec<BorrowedFrame<'_>> = command
            .iter()
            .map(|arg| BorrowedFrame::BulkString(arg))
            .collect();
        let frame = BorrowedFrame::Array(&args);
        let start = out.len();
        out.resize(start + frame.encode_len(false), 0);
        encode_borrowed(&mut out[start..], &frame, false)
            .map_err(|err| PyValueError::new_err(err.to_string()))?;
    }
    Ok(PyBytes::new(py, &out))
}

/// The Redis Cluster hash slot of `key` (CRC16 of the key, or of its `{hash tag}`, mod 16384).
#[pyfunction]
pub fn key_slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// The Python value of a reply: `bytes` for bulk strings, `str` for simple strings, `int`,
/// `None` for null, lists for arrays, and for an error reply an instance of `error_type`
/// made with its message.
fn to_python<'py>(
    py: Python<'py>,
    frame: OwnedFrame,
    error_type: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(match frame {
        OwnedFrame::SimpleString(s) => PyString::new(py, &String::from_utf8_lossy(&s)).into_any(),
        OwnedFrame::Error(message) => error_type.call1((message,))?,
        OwnedFrame::Integer(i) => i.into_pyobject(py)?.into_any(),
        OwnedFrame::BulkString(b) => PyBytes::new(py, &b).into_any(),
        OwnedFrame::Array(frames) => {
            let list = PyList::empty(py);
            for frame in frames {
                list.append(to_python(py, frame, error_type)?)?;
            }
            list.into_any()
        }
        OwnedFrame::Null => py.None().into_bound(py),
    })
}

/// The largest reply accepted by default: Redis's own `proto-max-bulk-len`.
const DEFAULT_MAX_SIZE: usize = 512 * 1024 * 1024;
/// The fewest bytes an element can take (`+\r\n`): a bound on how much an array header commits.
const MIN_ELEMENT: usize = 3;
/// Longer than any length or integer line, with its sign (an `i64` has at most 20 characters).
const MAX_NUMBER_LINE: usize = 32;
/// Redis's replies nest a few arrays deep; the crate's decoder and `to_python` recurse once per
/// level, so a deeper reply is refused rather than left to exhaust the stack.
const MAX_DEPTH: usize = 64;
/// A buffer whose capacity is above this is shrunk once a reply is consumed, so one huge reply
/// does not pin its memory for the connection's lifetime.
const SHRINK_ABOVE: usize = 1024 * 1024;

/// Where the scan stands inside the reply being received.
#[derive(Clone, Copy)]
enum Phase {
    /// The next byte is an element's type.
    Type,
    /// A line from `start` up to the first CRLF: a simple string, an error, an integer, or the
    /// length of a bulk string or an array (`kind` is the type byte).
    Line { kind: u8, start: usize },
    /// A bulk string's body and its CRLF, which end at `end`.
    Bulk { end: usize },
}

/// Finds where each complete reply ends, looking at each received byte once, so a reply split
/// into many pieces costs the same as one piece. The crate's `decode` only says whether a buffer
/// holds a complete reply by parsing it from the start, which made each piece re-parse the
/// whole reply so far; it is now given only complete replies.
struct Scanner {
    /// The next byte of the buffer to look at.
    cursor: usize,
    /// Where the reply being scanned starts.
    frame_start: usize,
    phase: Phase,
    /// For each array being read, innermost last, the elements not yet started.
    open: Vec<usize>,
    /// The sum of `open`, so the fewest bytes the reply still needs is known at once.
    pending: usize,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            cursor: 0,
            frame_start: 0,
            phase: Phase::Type,
            open: Vec::new(),
            pending: 0,
        }
    }

    /// Scans `buf` from where the last call stopped to its end, pushing the end offset of each
    /// reply completed. An `Err` is the `ValueError`'s message.
    fn scan(&mut self, buf: &[u8], max_size: usize, ends: &mut Vec<usize>) -> Result<(), String> {
        loop {
            match self.phase {
                Phase::Type => {
                    let Some(&kind) = buf.get(self.cursor) else {
                        break;
                    };
                    if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
                        return Err(format!(
                            "not a Redis reply: type byte {:?}",
                            char::from(kind)
                        ));
                    }
                    if let Some(left) = self.open.last_mut() {
                        *left -= 1;
                        self.pending -= 1;
                    }
                    self.cursor += 1;
                    self.phase = Phase::Line {
                        kind,
                        start: self.cursor,
                    };
                }
                Phase::Line { kind, start } => {
                    let Some(end) = line_end(buf, start, self.cursor) else {
                        self.cursor = buf.len();
                        if matches!(kind, b':' | b'$' | b'*')
                            && self.cursor - start > MAX_NUMBER_LINE
                        {
                            return Err("not a Redis reply: a number line too long".into());
                        }
                        break;
                    };
                    self.cursor = end;
                    let line = &buf[start..end - 2];
                    match (kind, parse_length(kind, line)?) {
                        (b'$', Some(len)) => {
                            let body_end = end
                                .checked_add(len)
                                .and_then(|n| n.checked_add(2))
                                .ok_or_else(|| too_big(max_size))?;
                            self.phase = Phase::Bulk { end: body_end };
                            self.check_size(max_size)?;
                        }
                        (b'*', Some(len)) if len > 0 => {
                            if self.open.len() == MAX_DEPTH {
                                return Err(format!(
                                    "not a Redis reply: arrays nested over {MAX_DEPTH} deep"
                                ));
                            }
                            self.open.push(len);
                            self.pending = self
                                .pending
                                .checked_add(len)
                                .ok_or_else(|| too_big(max_size))?;
                            self.phase = Phase::Type;
                            self.check_size(max_size)?;
                        }
                        _ => self.element_done(max_size, ends)?,
                    }
                }
                Phase::Bulk { end } => {
                    if buf.len() < end {
                        self.cursor = buf.len();
                        break;
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(
                            "not a Redis reply: a bulk string longer than its length".into()
                        );
                    }
                    self.cursor = end;
                    self.element_done(max_size, ends)?;
                }
            }
        }
        self.check_size(max_size)
    }

    /// After an element ends: the arrays it completes are closed, and when no array is left
    /// open the reply is complete.
    fn element_done(&mut self, max_size: usize, ends: &mut Vec<usize>) -> Result<(), String> {
        self.phase = Phase::Type;
        while self.open.last() == Some(&0) {
            self.open.pop();
        }
        if self.open.is_empty() {
            self.check_size(max_size)?;
            ends.push(self.cursor);
            self.frame_start = self.cursor;
        }
        Ok(())
    }

    /// `Err` once the reply being scanned is known to need more than `max_size` bytes: the
    /// bytes seen, a bulk string's announced length, and the fewest bytes that the elements
    /// its arrays announced can take.
    fn check_size(&self, max_size: usize) -> Result<(), String> {
        let known = match self.phase {
            Phase::Bulk { end } => end,
            Phase::Type | Phase::Line { .. } => self.cursor,
        };
        let least = self
            .pending
            .checked_mul(MIN_ELEMENT)
            .and_then(|rest| rest.checked_add(known - self.frame_start));
        match least {
            Some(least) if least <= max_size => Ok(()),
            _ => Err(too_big(max_size)),
        }
    }

    /// The buffer's first `n` bytes, all of complete replies, were removed.
    fn shift(&mut self, n: usize) {
        self.cursor -= n;
        self.frame_start -= n;
        self.phase = match self.phase {
            Phase::Type => Phase::Type,
            Phase::Line { kind, start } => Phase::Line {
                kind,
                start: start - n,
            },
            Phase::Bulk { end } => Phase::Bulk { end: end - n },
        };
    }
}

fn too_big(max_size: usize) -> String {
    format!("Redis reply bigger than max_size ({max_size} bytes)")
}

/// The offset just past the first CRLF after `start`, looking at the bytes from `from` on
/// (those before were looked at by an earlier call), or `None` when there is none yet. The
/// crate's decoder ends these lines at the first CRLF too.
fn line_end(buf: &[u8], start: usize, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(found) = buf[at..].iter().position(|&b| b == b'\n') {
        let lf = at + found;
        if lf > start && buf[lf - 1] == b'\r' {
            return Some(lf + 1);
        }
        at = lf + 1;
    }
    None
}

/// For a bulk string or array header, its length (`None` for null, -1), parsed as the crate
/// does; for other lines, `None`: the crate checks them when it decodes the reply.
fn parse_length(kind: u8, line: &[u8]) -> Result<Option<usize>, String> {
    if !matches!(kind, b'$' | b'*') {
        return Ok(None);
    }
    let length = std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse::<isize>().ok());
    match length {
        Some(-1) => Ok(None),
        Some(length) if length >= 0 => Ok(Some(length as usize)),
        _ => Err(format!(
            "not a Redis reply: length {:?}",
            String::from_utf8_lossy(line)
        )),
    }
}

struct DecoderState {
    /// Bytes received and not yet decoded: the start of a reply.
    buffer: Vec<u8>,
    scanner: Scanner,
    max_size: usize,
    /// Bytes the scanner has moved past, plus the bytes of the replies given to the decoder.
    scanned: u64,
    /// Set by a `ValueError`: the stream's place is lost, so every later `feed` fails too.
    failed: bool,
    error_type: Option<Py<PyAny>>,
}

impl DecoderState {
    /// Appends `data` and decodes the replies it completes, within the borrow: no Python runs.
    fn decode_fed(&mut self, data: &[u8]) -> Result<Vec<OwnedFrame>, String> {
        if self.failed {
            return Err("not a Redis reply: the stream failed to decode earlier".into());
        }
        self.buffer.extend_from_slice(data);
        let mut ends = Vec::new();
        let before = self.scanner.cursor;
        let scanned = self.scanner.scan(&self.buffer, self.max_size, &mut ends);
        self.scanned += (self.scanner.cursor - before) as u64;
        scanned?;
        let mut frames = Vec::with_capacity(ends.len());
        let mut start = 0;
        for end in ends {
            let reply = &self.buffer[start..end];
            match decode(reply) {
                Ok(Some((frame, used))) if used == reply.len() => frames.push(frame),
                Ok(_) => return Err("not a Redis reply: its length is inconsistent".into()),
                Err(err) => return Err(format!("not a Redis reply: {err}")),
            }
            self.scanned += reply.len() as u64;
            start = end;
        }
        if start > 0 {
            self.buffer.drain(..start);
            self.scanner.shift(start);
            if self.buffer.capacity() > SHRINK_ABOVE
                && self.buffer.len() < self.buffer.capacity() / 4
            {
                self.buffer.shrink_to(self.buffer.len());
            }
        }
        Ok(frames)
    }
}

/// Replies from a byte stream fed in pieces of any size.
#[pyclass(module = "txsession._txsession", name = "RespDecoder", frozen)]
pub struct RespDecoder {
    state: GilCell<DecoderState>,
}

#[pymethods]
impl RespDecoder {
    /// A decoder whose error replies become `error_type(message)`, refusing replies over
    /// `max_size` bytes.
    #[new]
    #[pyo3(signature = (error_type, max_size = DEFAULT_MAX_SIZE))]
    fn new(error_type: Py<PyAny>, max_size: usize) -> Self {
        RespDecoder {
            state: GilCell::new(DecoderState {
                buffer: Vec::new(),
                scanner: Scanner::new(),
                max_size,
                scanned: 0,
                failed: false,
                error_type: Some(error_type),
            }),
        }
    }

    /// Every reply completed by `data`, in order; `ValueError` for bytes that are not RESP2 or
    /// for a reply over `max_size`.
    fn feed<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let (frames, error_type) = {
            let mut state = self.state.borrow_mut(py);
            let frames = match state.decode_fed(data) {
                Ok(frames) => frames,
                Err(message) => {
                    state.failed = true;
                    state.buffer = Vec::new();
                    return Err(PyValueError::new_err(message));
                }
            };
            (frames, state.error_type.as_ref().map(|e| e.clone_ref(py)))
        };
        let error_type = match error_type {
            Some(error_type) => error_type.into_bound(py),
            None => py.get_type::<PyValueError>().into_any(),
        };
        let replies = PyList::empty(py);
        for frame in frames {
            replies.append(to_python(py, frame, &error_type)?)?;
        }
        Ok(replies)
    }

    #[getter]
    fn max_size(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).max_size
    }

    #[getter]
    fn scanned(&self, py: Python<'_>) -> u64 {
        self.state.borrow_mut(py).scanned
    }

    #[getter]
    fn capacity(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).buffer.capacity()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.state.try_borrow_mut() else {
            return Ok(());
        };
        traverse_fields!(visit; s.error_type)
    }

    fn __clear__(&self) {
        self.state.clear_with(|s| s.error_type.take());
    }
}

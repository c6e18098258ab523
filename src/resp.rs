//! The Redis wire format (RESP2, and RESP3 on request) for `txsession.redis`:
//! `encode_commands` turns commands into the bytes to send, and a `RespDecoder` turns received
//! bytes into replies through the `redis-protocol` crate's sans-IO decoders, so no parsing
//! runs in Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use redis_protocol::error::RedisProtocolError;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use redis_protocol::resp3::decode::complete::decode as decode_resp3;
use redis_protocol::resp3::types::OwnedFrame as Resp3Frame;

use crate::gil::GilCell;
use crate::traverse_fields;

/// Each command, a sequence of `bytes` arguments, as a RESP array of bulk strings, one after
/// the other in one buffer (a pipeline).
///
/// Written here rather than by `redis-protocol`'s encoder, which sizes every length it writes
/// with a floating-point `log10`: a session write of 20 arguments cost about 8,900
/// instructions that way.
#[pyfunction]
pub fn encode_commands<'py>(
    py: Python<'py>,
    commands: Vec<Vec<Bound<'py, PyBytes>>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let size: usize = commands
        .iter()
        .map(|command| {
            // `*`, the count and CRLF; per argument `$`, its length, CRLF, itself and CRLF
            // (20 digits hold any usize).
            23 + command
                .iter()
                .map(|arg| arg.as_bytes().len() + 25)
                .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(size);
    let mut digits = itoa::Buffer::new();
    for command in &commands {
        out.push(b'*');
        out.extend_from_slice(digits.format(command.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        for arg in command {
            let arg = arg.as_bytes();
            out.push(b'$');
            out.extend_from_slice(digits.format(arg.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
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

/// The Python value of a RESP3 reply: as `to_python` for RESP2's types, and `True`/`False` for
/// booleans, `float` for doubles, `int` for big numbers, `bytes` for a verbatim string's text,
/// `dict` for maps, `list` for sets, `error_type(message)` for blob errors, and a `tuple` for a
/// push, which no reply ever is, so pushes can be told apart from replies.
fn resp3_to_python<'py>(
    py: Python<'py>,
    frame: Resp3Frame,
    error_type: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let convert_all = |frames: Vec<Resp3Frame>| -> PyResult<Vec<Bound<'py, PyAny>>> {
        frames
            .into_iter()
            .map(|frame| resp3_to_python(py, frame, error_type))
            .collect()
    };
    Ok(match frame {
        Resp3Frame::SimpleString { data, .. } => {
            PyString::new(py, &String::from_utf8_lossy(&data)).into_any()
        }
        Resp3Frame::SimpleError { data, .. } => error_type.call1((data,))?,
        Resp3Frame::BlobError { data, .. } => {
            error_type.call1((String::from_utf8_lossy(&data),))?
        }
        Resp3Frame::Number { data, .. } => data.into_pyobject(py)?.into_any(),
        Resp3Frame::BlobString { data, .. } | Resp3Frame::VerbatimString { data, .. } => {
            PyBytes::new(py, &data).into_any()
        }
        Resp3Frame::Null => py.None().into_bound(py),
        Resp3Frame::Boolean { data, .. } => PyBool::new(py, data).to_owned().into_any(),
        Resp3Frame::Double { data, .. } => PyFloat::new(py, data).into_any(),
        // The scanner let through only a sign and digits; Python's `int` takes any size (up to
        // its own limit on digits, past which it raises `ValueError`).
        Resp3Frame::BigNumber { data, .. } => py
            .get_type::<PyInt>()
            .call1((PyString::new(py, &String::from_utf8_lossy(&data)),))?,
        Resp3Frame::Array { data, .. } => PyList::new(py, convert_all(data)?)?.into_any(),
        Resp3Frame::Set { data, .. } => {
            PyList::new(py, convert_all(data.into_iter().collect())?)?.into_any()
        }
        Resp3Frame::Push { data, .. } => PyTuple::new(py, convert_all(data)?)?.into_any(),
        Resp3Frame::Map { data, .. } => {
            let dict = PyDict::new(py);
            for (key, value) in data {
                dict.set_item(
                    resp3_to_python(py, key, error_type)?,
                    resp3_to_python(py, value, error_type)?,
                )?;
            }
            dict.into_any()
        }
        // The scanner refuses the bytes these come from (`H`, `;`): they are not replies.
        Resp3Frame::Hello { .. } | Resp3Frame::ChunkedString(_) => {
            return Err(PyValueError::new_err(
                "not a Redis reply: a RESP3 frame sent only to servers or streamed",
            ));
        }
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
    /// A line from `start` up to the first CRLF: a simple string, an error, an integer, a
    /// RESP3 null, boolean, double or big number, or the length of a bulk string or an
    /// aggregate (`kind` is the type byte).
    Line { kind: u8, start: usize },
    /// A bulk string's body (or a RESP3 blob error's or verbatim string's) and its CRLF, which
    /// end at `end`.
    Bulk { end: usize },
}

/// An aggregate being read.
#[derive(Clone, Copy)]
struct Open {
    /// Its elements not yet started (a map's or an attribute's keys and values both count).
    left: usize,
    /// A RESP3 attribute: when it ends, the element it describes is still to come, so its end
    /// ends no element of its own.
    attribute: bool,
}

/// Finds where each complete reply ends, looking at each received byte once, so a reply split
/// into many pieces costs the same as one piece. The crate's `decode` only says whether a buffer
/// holds a complete reply by parsing it from the start, which made each piece re-parse the
/// whole reply so far; it is now given only complete replies.
struct Scanner {
    /// Whether RESP3's types are accepted, and replies rewritten for the crate's RESP3 decoder
    /// (see `rewrites`).
    resp3: bool,
    /// The next byte of the buffer to look at.
    cursor: usize,
    /// Where the reply being scanned starts.
    frame_start: usize,
    phase: Phase,
    /// For each aggregate being read, innermost last.
    open: Vec<Open>,
    /// The sum of the `left` of `open`, so the fewest bytes the reply still needs is known at
    /// once.
    pending: usize,
    /// How many of `open` are attributes: inside one, nothing is put in `rewrites`, since the
    /// whole attribute is dropped.
    in_attribute: usize,
    /// With `resp3`, the spans of the buffer, in order, to rewrite before the crate decodes the
    /// reply holding them: an attribute (its first byte `|`) is dropped, since the crate refuses
    /// one before a null and a caller has no use for it, and a RESP2 null (`$-1` or `*-1`,
    /// which Redis may still send), which the crate's RESP3 decoder refuses as a streamed
    /// type's header, becomes RESP3's null `_`. An attribute not yet ended has its own start as
    /// its end.
    rewrites: Vec<(usize, usize)>,
}

impl Scanner {
    fn new(resp3: bool) -> Self {
        Scanner {
            resp3,
            cursor: 0,
            frame_start: 0,
            phase: Phase::Type,
            open: Vec::new(),
            pending: 0,
            in_attribute: 0,
            rewrites: Vec::new(),
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
                    let known = match kind {
                        b'+' | b'-' | b':' | b'$' | b'*' => true,
                        b'_' | b'#' | b',' | b'(' | b'!' | b'=' | b'%' | b'~' | b'>' | b'|' => {
                            self.resp3
                        }
                        _ => false,
                    };
                    if !known {
                        return Err(format!(
                            "not a Redis reply: type byte {:?}",
                            char::from(kind)
                        ));
                    }
                    // An attribute is not an element: the element after it is.
                    if kind != b'|' {
                        if let Some(open) = self.open.last_mut() {
                            open.left -= 1;
                            self.pending -= 1;
                        }
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
                        if matches!(
                            kind,
                            b':' | b'$' | b'*' | b'!' | b'=' | b'%' | b'~' | b'>' | b'|'
                        ) && self.cursor - start > MAX_NUMBER_LINE
                        {
                            return Err("not a Redis reply: a number line too long".into());
                        }
                        break;
                    };
                    self.cursor = end;
                    let line = &buf[start..end - 2];
                    if self.resp3 {
                        check_resp3_line(kind, line)?;
                    }
                    match (kind, parse_length(kind, line)?) {
                        (b'$' | b'!' | b'=', Some(len)) => {
                            let body_end = end
                                .checked_add(len)
                                .and_then(|n| n.checked_add(2))
                                .ok_or_else(|| too_big(max_size))?;
                            self.phase = Phase::Bulk { end: body_end };
                            self.check_size(max_size)?;
                        }
                        (b'*' | b'~' | b'>' | b'%' | b'|', Some(len)) => {
                            let count = if matches!(kind, b'%' | b'|') {
                                len.checked_mul(2).ok_or_else(|| too_big(max_size))?
                            } else {
                                len
                            };
                            self.open_aggregate(kind == b'|', start - 1, count, max_size, ends)?;
                        }
                        (b'$' | b'*', None) => {
                            if self.resp3 && self.in_attribute == 0 {
                                self.rewrites.push((start - 1, end));
                            }
                            self.element_done(max_size, ends)?;
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

    /// After an aggregate's header (its type byte at `at`), announcing `count` elements.
    fn open_aggregate(
        &mut self,
        attribute: bool,
        at: usize,
        count: usize,
        max_size: usize,
        ends: &mut Vec<usize>,
    ) -> Result<(), String> {
        if attribute && self.in_attribute == 0 {
            self.rewrites
                .push((at, if count == 0 { self.cursor } else { at }));
        }
        if count == 0 {
            if attribute {
                self.phase = Phase::Type;
                return Ok(());
            }
            return self.element_done(max_size, ends);
        }
        if self.open.len() == MAX_DEPTH {
            let what = if self.resp3 { "aggregates" } else { "arrays" };
            return Err(format!(
                "not a Redis reply: {what} nested over {MAX_DEPTH} deep"
            ));
        }
        self.open.push(Open {
            left: count,
            attribute,
        });
        if attribute {
            self.in_attribute += 1;
        }
        self.pending = self
            .pending
            .checked_add(count)
            .ok_or_else(|| too_big(max_size))?;
        self.phase = Phase::Type;
        self.check_size(max_size)
    }

    /// After an element ends: the aggregates it completes are closed, and when none is left
    /// open the reply is complete. An attribute's end stops there: the element it describes
    /// comes next, and the reply does not end before it.
    fn element_done(&mut self, max_size: usize, ends: &mut Vec<usize>) -> Result<(), String> {
        self.phase = Phase::Type;
        while let Some(&Open { left: 0, attribute }) = self.open.last() {
            self.open.pop();
            if attribute {
                self.in_attribute -= 1;
                if self.in_attribute == 0 {
                    if let Some(span) = self.rewrites.last_mut() {
                        span.1 = self.cursor;
                    }
                }
                return Ok(());
            }
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
    /// its aggregates announced can take.
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

    /// The buffer's first `n` bytes, all of complete replies, were removed, and with them
    /// their rewrites.
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
        let done = self.rewrites.partition_point(|&(from, _)| from < n);
        self.rewrites.drain(..done);
        for span in &mut self.rewrites {
            span.0 -= n;
            span.1 -= n;
        }
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

/// For a RESP3 line, what the crate's RESP3 decoder does not check itself: a null's line is
/// empty, a big number is a sign and digits (it becomes Python's `int(line)`, which would also
/// take spaces and underscores), and streamed types, which Redis never sends to a client, are
/// refused rather than framed.
fn check_resp3_line(kind: u8, line: &[u8]) -> Result<(), String> {
    match kind {
        b'_' if !line.is_empty() => Err("not a Redis reply: a null with a value".into()),
        b'(' => {
            let digits = line.strip_prefix(b"-").unwrap_or(line);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(format!(
                    "not a Redis reply: big number {:?}",
                    String::from_utf8_lossy(line)
                ));
            }
            Ok(())
        }
        b'$' | b'*' | b'%' | b'~' if line == b"?" => {
            Err("not a Redis reply: a streamed RESP3 type, which Redis does not send".into())
        }
        _ => Ok(()),
    }
}

/// For a bulk string's, a blob's or an aggregate's header, its length (`None` for RESP2's
/// null, -1, which only bulk strings and arrays have), parsed as the crate does; for other
/// lines, `None`: the crate checks them when it decodes the reply.
fn parse_length(kind: u8, line: &[u8]) -> Result<Option<usize>, String> {
    if !matches!(kind, b'$' | b'*' | b'!' | b'=' | b'%' | b'~' | b'>' | b'|') {
        return Ok(None);
    }
    let length = std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse::<isize>().ok());
    match length {
        Some(-1) if matches!(kind, b'$' | b'*') => Ok(None),
        Some(length) if length >= 0 => Ok(Some(length as usize)),
        _ => Err(format!(
            "not a Redis reply: length {:?}",
            String::from_utf8_lossy(line)
        )),
    }
}

/// The bytes of the reply `buf[start..]` with `rewrites` (all inside it) applied: an
/// attribute dropped, a RESP2 null written as RESP3's `_`.
fn rewritten(buf: &[u8], start: usize, rewrites: &[(usize, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() - start);
    let mut at = start;
    for &(from, to) in rewrites {
        out.extend_from_slice(&buf[at..from]);
        if buf[from] != b'|' {
            out.extend_from_slice(b"_\r\n");
        }
        at = to;
    }
    out.extend_from_slice(&buf[at..]);
    out
}

/// The crate's `decode` for RESP2 or RESP3: the first frame in a buffer and the bytes it used.
type Decode<T> = fn(&[u8]) -> Result<Option<(T, usize)>, RedisProtocolError>;

/// The one reply that `reply` holds, decoded by the crate's `decode`, which must use all of it.
fn decode_whole<T>(reply: &[u8], decode: Decode<T>) -> Result<T, String> {
    match decode(reply) {
        Ok(Some((frame, used))) if used == reply.len() => Ok(frame),
        Ok(_) => Err("not a Redis reply: its length is inconsistent".into()),
        Err(err) => Err(format!("not a Redis reply: {err}")),
    }
}

/// The replies a `feed` completed, from the decoder its `RespDecoder` was made for.
enum Frames {
    Resp2(Vec<OwnedFrame>),
    Resp3(Vec<Resp3Frame>),
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
    fn decode_fed(&mut self, data: &[u8]) -> Result<Frames, String> {
        if self.failed {
            return Err("not a Redis reply: the stream failed to decode earlier".into());
        }
        self.buffer.extend_from_slice(data);
        let mut ends = Vec::new();
        let before = self.scanner.cursor;
        let scanned = self.scanner.scan(&self.buffer, self.max_size, &mut ends);
        self.scanned += (self.scanner.cursor - before) as u64;
        scanned?;
        let mut frames = if self.scanner.resp3 {
            Frames::Resp3(Vec::with_capacity(ends.len()))
        } else {
            Frames::Resp2(Vec::with_capacity(ends.len()))
        };
        let mut rewrites = &self.scanner.rewrites[..];
        let mut start = 0;
        for end in ends {
            let inside = rewrites.partition_point(|&(from, _)| from < end);
            let copy;
            let reply = if inside == 0 {
                &self.buffer[start..end]
            } else {
                copy = rewritten(&self.buffer[..end], start, &rewrites[..inside]);
                rewrites = &rewrites[inside..];
                &copy[..]
            };
            match &mut frames {
                Frames::Resp2(frames) => frames.push(decode_whole(reply, decode)?),
                Frames::Resp3(frames) => frames.push(decode_whole(reply, decode_resp3)?),
            }
            self.scanned += (end - start) as u64;
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
    /// `max_size` bytes; with `resp3`, of RESP3 as well as RESP2.
    #[new]
    #[pyo3(signature = (error_type, max_size = DEFAULT_MAX_SIZE, resp3 = false))]
    fn new(error_type: Py<PyAny>, max_size: usize, resp3: bool) -> Self {
        RespDecoder {
            state: GilCell::new(DecoderState {
                buffer: Vec::new(),
                scanner: Scanner::new(resp3),
                max_size,
                scanned: 0,
                failed: false,
                error_type: Some(error_type),
            }),
        }
    }

    /// Every reply completed by `data`, in order; `ValueError` for bytes that are not RESP2
    /// (nor RESP3, with `resp3`) or for a reply over `max_size`.
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
        match frames {
            Frames::Resp2(frames) => {
                for frame in frames {
                    replies.append(to_python(py, frame, &error_type)?)?;
                }
            }
            Frames::Resp3(frames) => {
                let converted = frames
                    .into_iter()
                    .try_for_each(|frame| replies.append(resp3_to_python(py, frame, &error_type)?));
                // The replies after the one that failed are lost with this call (a big number
                // past Python's digit limit, or an `error_type` that raised), so the stream's
                // place is too.
                if let Err(err) = converted {
                    let mut state = self.state.borrow_mut(py);
                    state.failed = true;
                    state.buffer = Vec::new();
                    return Err(err);
                }
            }
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

    /// Bytes received and held as the start of a reply not complete yet: 0 when the stream
    /// was fed up to a reply's end.
    #[getter]
    fn buffered(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).buffer.len()
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

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

#[derive(Default)]
struct DecoderState {
    /// Bytes received and not yet decoded: the start of a reply.
    buffer: Vec<u8>,
    error_type: Option<Py<PyAny>>,
}

/// Replies from a byte stream fed in pieces of any size.
#[pyclass(module = "txsession._txsession", name = "RespDecoder", frozen)]
pub struct RespDecoder {
    state: GilCell<DecoderState>,
}

#[pymethods]
impl RespDecoder {
    /// A decoder whose error replies become `error_type(message)`.
    #[new]
    fn new(error_type: Py<PyAny>) -> Self {
        RespDecoder {
            state: GilCell::new(DecoderState {
                buffer: Vec::new(),
                error_type: Some(error_type),
            }),
        }
    }

    /// Every reply completed by `data`, in order; `ValueError` for bytes that are not RESP2.
    fn feed<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let replies = PyList::empty(py);
        let mut frames = Vec::new();
        let error_type = {
            let mut state = self.state.borrow_mut(py);
            let buffer = &mut state.buffer;
            buffer.extend_from_slice(data);
            let mut used = 0;
            let decoded = loop {
                match decode(&buffer[used..]) {
                    Ok(Some((frame, length))) => {
                        frames.push(frame);
                        used += length;
                    }
                    Ok(None) => break Ok(()),
                    Err(err) => break Err(err),
                }
            };
            buffer.drain(..used);
            decoded.map_err(|err| PyValueError::new_err(format!("not a Redis reply: {err}")))?;
            state.error_type.as_ref().map(|e| e.clone_ref(py))
        };
        let error_type = match error_type {
            Some(error_type) => error_type.into_bound(py),
            None => py.get_type::<PyValueError>().into_any(),
        };
        for frame in frames {
            replies.append(to_python(py, frame, &error_type)?)?;
        }
        Ok(replies)
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

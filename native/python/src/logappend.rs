//! The event log's steady-state append as one call: each `(path, chunk)` is appended to
//! its file (`O_APPEND`) and fsynced, the files at once on their own threads, with the GIL
//! released for the whole call — the caller re-takes the GIL once per batch, not after
//! every `write` and `fsync` (each re-take can wait a switch interval behind a thread busy
//! in Python).
//!
//! Only the I/O lives here; what a failure means (cut the file back, roll it) stays with
//! the caller (`connectors/eventlog.py`), which gets each file's outcome.

use std::fs::OpenOptions;
use std::io::{self, Write};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(append_files, m)?)?;
    Ok(())
}

/// Where an append failed: opening the file, writing the chunk, or syncing it.
#[derive(Clone, Copy)]
enum Stage {
    Open,
    Write,
    Fsync,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::Write => "write",
            Stage::Fsync => "fsync",
        }
    }
}

/// Open `path` for appending, write all of `chunk`, fsync, close.
fn append_one(path: &str, chunk: &[u8]) -> Result<(), (Stage, io::Error)> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| (Stage::Open, e))?;
    file.write_all(chunk).map_err(|e| (Stage::Write, e))?;
    file.sync_all().map_err(|e| (Stage::Fsync, e))?;
    Ok(()) // closed on drop; a failed close after a successful fsync loses nothing
}

/// Append `chunk` to the existing file `path` and fsync it, for every `(path, chunk)` of
/// `items` (concurrently when there are several: their fsyncs then share the filesystem's
/// journal commits). Returns one outcome per item, in order: `None` when the chunk is
/// written and synced, else `(stage, errno, message)` with `stage` one of `"open"`,
/// `"write"`, `"fsync"` (`errno` 0 when the OS gave none). A failed item may have left part
/// or all of its chunk in the file; the others are unaffected.
#[pyfunction]
fn append_files(
    py: Python<'_>,
    items: Vec<(String, Bound<'_, PyBytes>)>,
) -> Vec<Option<(&'static str, i32, String)>> {
    let jobs: Vec<(&str, &[u8])> = items
        .iter()
        .map(|(path, chunk)| (path.as_str(), chunk.as_bytes()))
        .collect();
    let outcomes = py.detach(|| {
        if jobs.len() <= 1 {
            return jobs
                .iter()
                .map(|(p, c)| append_one(p, c))
                .collect::<Vec<_>>();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|&(p, c)| scope.spawn(move || append_one(p, c)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err((Stage::Write, io::Error::other("append thread panicked")))
                    })
                })
                .collect()
        })
    });
    outcomes
        .into_iter()
        .map(|r| {
            r.err().map(|(stage, e)| {
                let errno = e.raw_os_error().unwrap_or(0);
                (stage.name(), errno, e.to_string())
            })
        })
        .collect()
}

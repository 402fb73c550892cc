//! The I/O of the event log's steady-state append (`logwrite::append_log_blocks`): a
//! chunk appended to an open file (`O_APPEND`) and fsynced. What a failure means (cut the
//! file back, roll it) stays with the caller (`connectors/eventlog.py`).

use std::fs::OpenOptions;
use std::io::{self, Write};

/// Where an append failed: opening the file, writing the chunk, or syncing it.
#[derive(Clone, Copy)]
pub(crate) enum Stage {
    Open,
    Write,
    Fsync,
}

impl Stage {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::Write => "write",
            Stage::Fsync => "fsync",
        }
    }
}

/// Open `path` for appending, write all of `chunk`, fsync, close.
pub(crate) fn append_one(path: &str, chunk: &[u8]) -> Result<(), (Stage, io::Error)> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| (Stage::Open, e))?;
    file.write_all(chunk).map_err(|e| (Stage::Write, e))?;
    file.sync_all().map_err(|e| (Stage::Fsync, e))?;
    Ok(()) // closed on drop; a failed close after a successful fsync loses nothing
}

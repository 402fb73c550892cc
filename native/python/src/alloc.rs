//! The extension's allocator (mimalloc, `lib.rs`): the one knob a caller turns, how long
//! freed memory stays with the allocator before it is given back to the OS.

use std::os::raw::{c_int, c_long};

use pyo3::prelude::*;

/// `mi_option_purge_delay` in mimalloc.h (the same index in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: c_int = 15;

extern "C" {
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// mimalloc's purge delay in ms (freed pages are given back to the OS that long after they
/// were freed; -1: never); `ms` sets it. Returns the value before the call.
#[pyfunction]
#[pyo3(signature = (ms=None))]
fn allocator_purge_delay(ms: Option<i64>) -> i64 {
    // SAFETY: plain C calls into the mimalloc linked as this module's global allocator
    // (libmimalloc-sys); its option table is process-wide and safe to read and write from
    // any thread, and MI_OPTION_PURGE_DELAY is a valid option index.
    unsafe {
        let before = mi_option_get(MI_OPTION_PURGE_DELAY);
        if let Some(ms) = ms {
            mi_option_set(
                MI_OPTION_PURGE_DELAY,
                ms.clamp(-1, i64::from(i32::MAX)) as c_long,
            );
        }
        before as i64
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(allocator_purge_delay, m)?)?;
    Ok(())
}

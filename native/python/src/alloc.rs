//! The extension's allocator (mimalloc, `lib.rs`) and the process's memory: how long freed
//! memory stays with the allocator before it is given back to the OS, and whether fresh
//! memory is faulted in as transparent huge pages.

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

#[cfg(target_os = "linux")]
extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
}

#[cfg(target_os = "linux")]
const PR_SET_THP_DISABLE: c_int = 41;
#[cfg(target_os = "linux")]
const PR_GET_THP_DISABLE: c_int = 42;

/// Whether transparent huge pages are disabled for this process (Linux
/// `prctl(PR_SET_THP_DISABLE)`: later page faults of every mapping take 4-KiB pages, so a
/// sparsely touched region is not zeroed 2 MiB at a time); `disabled` sets it. Returns the
/// value before the call (always False, and nothing set, elsewhere than Linux).
#[pyfunction]
#[pyo3(signature = (disabled=None))]
fn huge_pages_disabled(disabled: Option<bool>) -> PyResult<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with these options takes plain integer arguments and touches no
        // memory of ours; it only reads or sets a flag of this process.
        let before = unsafe { prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        if before < 0 {
            return Err(crate::convert::err(std::io::Error::last_os_error()));
        }
        if let Some(off) = disabled {
            // SAFETY: as above.
            if unsafe { prctl(PR_SET_THP_DISABLE, c_int::from(off), 0, 0, 0) } < 0 {
                return Err(crate::convert::err(std::io::Error::last_os_error()));
            }
        }
        Ok(before == 1)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = disabled;
        Ok(false)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(allocator_purge_delay, m)?)?;
    m.add_function(wrap_pyfunction!(huge_pages_disabled, m)?)?;
    Ok(())
}

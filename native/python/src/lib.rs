//! The PyO3 face of skewless-core, imported as `engine._native`.
//!
//! Every bulk call takes a batch (columns or raw bytes), releases the GIL while the core
//! works, and maps core errors onto `engine.errors` exceptions.

use pyo3::prelude::*;

/// mimalloc: the worker and the sweep allocate and free many small tiles and strings per
/// batch; glibc's malloc spent a fifth of the worker's time consolidating free chunks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod alloc;
mod avro;
mod columns;
mod convert;
mod kernel;
mod logappend;
mod logwrite;
mod online;
mod read;
mod replay;
mod source;
mod sweep;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    alloc::register(m)?;
    kernel::register(m)?;
    avro::register(m)?;
    columns::register(m)?;
    source::register(m)?;
    logwrite::register(m)?;
    online::register(m)?;
    replay::register(m)?;
    read::register(m)?;
    sweep::register(m)?;
    Ok(())
}

//! The typed errors of the kernel; the binding maps each onto an `engine.errors` exception.

/// What the kernel refuses. New variants may be added: match with a wildcard arm.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// An aggregation function name the kernel does not know.
    #[error("unknown aggregation function {name:?}: expected one of count, sum, mean, variance, stddev, min, max, first, last, first_n, last_n, count_distinct, approx_count_distinct")]
    UnknownFunction { name: String },
    /// A column kind name the kernel does not know.
    #[error("unknown column kind {name:?}: expected one of int, float, str, bool, bytes")]
    UnknownKind { name: String },
    /// A function over a column kind it does not accept (e.g. `sum` over `str`).
    #[error(
        "aggregation function {function} does not accept a {kind} column: expected {expected}"
    )]
    KindNotAllowed {
        function: &'static str,
        kind: &'static str,
        expected: &'static str,
    },
    /// A tile layout that cannot be built (window/hop mismatch, lengths differ).
    #[error("tile layout: {0}")]
    Layout(String),
    /// A backfill sweep given inconsistent specs, columns or log files.
    #[error("backfill sweep: {0}")]
    Sweep(String),
}

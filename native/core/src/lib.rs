//! skewless-core: the one native kernel behind every path of skewless (DESIGN §8).
//!
//! Plain Rust, no Python: the binding crate (`native/python`) converts buffers and releases
//! the GIL. Every aggregate is a monoid (`init`, `add`, `merge`, `finalize`) whose `merge`
//! is associative and commutative bit for bit, so tiles, partitions and parallel sweeps
//! combine in any order with identical results.
//!
//! Modules, by layer:
//! - [`value`]: the dynamically typed scalar a column cell or a feature value holds;
//! - [`exact`]: exact dyadic arithmetic (sums, moments) rounded once, correctly;
//! - [`hll`]: the HyperLogLog sketch of `approx_count_distinct`;
//! - [`agg`]: the 13 aggregation functions as monoids;
//! - [`codec`]: the versioned binary tile codec of the online state;
//! - [`columns`]: typed columns with validity, the unit every batch call carries;
//! - [`tiles`]: tile layouts, folding rows into tiles, windows as of `t`;
//! - [`avro`]: schema-driven Avro decoding (datums, container files) into columns;
//! - [`source`]: source records (Kafka values) decoded and validated into columns;
//! - [`online`]: the worker's cached entity state, batch folds and Redis hash writes;
//! - [`replay`]: rebuild-online's replay of one log partition into every view's entity writes;
//! - [`read`]: the online reader's evaluation of raw hashes and its RESP replies;
//! - [`sweep`]: the backfill's point-in-time sweep over replayed records and labels.

pub mod agg;
pub mod avro;
pub mod codec;
pub mod columns;
pub mod error;
pub mod exact;
pub mod hll;
pub mod online;
pub mod read;
pub mod replay;
pub mod source;
pub mod sweep;
pub mod tiles;
pub mod value;

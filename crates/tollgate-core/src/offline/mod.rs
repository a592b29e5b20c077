//! What operators use offline, never on a host's request path: routing
//! quality ([`eval`]) and the charts it and `tollgate simulate` draw
//! ([`chart`]), and the in-memory host ([`sim`]) that routes, replays and
//! simulates workloads (the CLI) and stands in for a host in tests and fuzzing.
//!
//! Re-exported at the crate root as `tollgate_core::{eval, chart, sim}`.

pub mod chart;
pub mod eval;
pub mod sim;

//! Launching backends and getting rid of them: processes now, containers later,
//! behind the same shapes (`OutputLine`, `Exit`).

pub mod cgroup;
pub mod process;

pub use process::{spawn, Exit, OutputLine, ProcessHandle, ProcessSpec, Stream};

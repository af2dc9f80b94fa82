//! A directory [`crate::source::Source`] and [`crate::source::Target`]: file trees, analytics
//! exports, uploaded files. Files, directories and symlinks with modes, owners and
//! nanosecond mtimes; sparse files stay sparse; FIFOs, sockets and devices are recorded and
//! skipped on restore.

mod source;
mod target;

pub use source::DirSource;
pub use target::DirTarget;

//! A directory [`crate::source::Source`] and [`crate::source::Target`]: file trees, analytics
//! exports, uploaded files. Files, directories and symlinks with modes, owners and
//! nanosecond mtimes; sparse files stay sparse; FIFOs, sockets and devices are recorded and
//! skipped on restore.

mod lazy_file;
mod source;
mod target;
mod write_behind;

pub use lazy_file::LazyFile;
pub use source::DirSource;
pub use target::{sync_file_system, DirTarget};

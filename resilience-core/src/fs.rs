//! A directory [`crate::source::Source`] and [`crate::source::Target`].

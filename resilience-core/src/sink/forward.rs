//! [`forward_sink!`](crate::forward_sink): how a wrapper passes the [`Sink`](super::Sink) methods
//! it does not change to the sink it wraps.

/// What [`forward_sink!`](crate::forward_sink) expands to needs, reachable from other crates.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub use bytes::Bytes;
    pub use futures::stream::BoxStream;
}

/// Implements [`Sink`](crate::sink::Sink) for a wrapper: the methods it changes are written out,
/// every other one is named in a list and forwarded to the inner sink.
///
/// The impl carries `#[deny(clippy::missing_trait_methods)]`, so a method neither written nor
/// listed — a provided method such as [`put_copy`](crate::sink::Sink::put_copy) included — is an
/// error under clippy, rather than a wrapper that silently drops the inner sink's override.
///
/// The inner sink is `self.<field>` (`to self.inner: …`) or, for smart pointers, `**self`.
///
/// ```
/// use resilience_core::sink::{ByteStream, PutMode, Sink, SinkError};
///
/// /// Counts streamed puts.
/// #[derive(Debug)]
/// struct Counted<S> {
///     inner: S,
///     puts: std::sync::atomic::AtomicU64,
/// }
///
/// resilience_core::forward_sink! {
///     (impl<S: Sink> Sink for Counted<S>)
///     to self.inner: location, get_stream, head, list, delete, put, put_copy, get, get_range,
///         unfinished_uploads, discard_upload, retention, set_retention;
///
///     async fn put_stream(
///         &self,
///         key: &str,
///         data: ByteStream,
///         mode: PutMode,
///     ) -> Result<u64, SinkError> {
///         self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.put_stream(key, data, mode).await
///     }
/// }
/// ```
#[macro_export]
macro_rules! forward_sink {
    (
        $(#[$attr:meta])*
        ($($header:tt)*)
        to self.$field:ident: $($method:ident),* $(,)?;
        $($item:tt)*
    ) => {
        $crate::forward_sink!(@munch [$(#[$attr])*] [$($header)*] [self] [(&self.$field)]
            [] [$($method)*] [$($item)*]);
    };
    (
        $(#[$attr:meta])*
        ($($header:tt)*)
        to **self: $($method:ident),* $(,)?;
        $($item:tt)*
    ) => {
        $crate::forward_sink!(@munch [$(#[$attr])*] [$($header)*] [self] [(&**self)]
            [] [$($method)*] [$($item)*]);
    };

    // Every listed method generated: the impl. (`self` and the inner sink's expression come
    // from one expansion, so they name the same `self`.)
    (@munch [$($attr:tt)*] [$($header:tt)*] $s:tt $inner:tt [$($done:tt)*] [] [$($item:tt)*]) => {
        $($attr)*
        #[$crate::sink::__private::async_trait]
        #[deny(clippy::missing_trait_methods)]
        $($header)* {
            $($done)*
            $($item)*
        }
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [location $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            fn location(&$s) -> ::std::string::String {
                $crate::sink::Sink::location($inner)
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [put_stream $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn put_stream(
                &$s,
                key: &str,
                data: $crate::sink::ByteStream,
                mode: $crate::sink::PutMode,
            ) -> ::std::result::Result<u64, $crate::sink::SinkError> {
                $crate::sink::Sink::put_stream($inner, key, data, mode).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [get_stream $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn get_stream(
                &$s,
                key: &str,
            ) -> ::std::result::Result<$crate::sink::ByteStream, $crate::sink::SinkError> {
                $crate::sink::Sink::get_stream($inner, key).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [head $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn head(
                &$s,
                key: &str,
            ) -> ::std::result::Result<$crate::sink::ObjectMeta, $crate::sink::SinkError> {
                $crate::sink::Sink::head($inner, key).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [list $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            fn list(
                &$s,
                prefix: &str,
            ) -> $crate::sink::__private::BoxStream<
                '_,
                ::std::result::Result<$crate::sink::ObjectMeta, $crate::sink::SinkError>,
            > {
                $crate::sink::Sink::list($inner, prefix)
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [delete $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn delete(&$s, key: &str) -> ::std::result::Result<(), $crate::sink::SinkError> {
                $crate::sink::Sink::delete($inner, key).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [put $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn put(
                &$s,
                key: &str,
                data: $crate::sink::__private::Bytes,
                mode: $crate::sink::PutMode,
            ) -> ::std::result::Result<(), $crate::sink::SinkError> {
                $crate::sink::Sink::put($inner, key, data, mode).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [put_copy $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn put_copy(
                &$s,
                key: &str,
                data: $crate::sink::ByteStream,
                origin: &$crate::sink::ObjectMeta,
            ) -> ::std::result::Result<$crate::sink::Copied, $crate::sink::SinkError> {
                $crate::sink::Sink::put_copy($inner, key, data, origin).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [get $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn get(
                &$s,
                key: &str,
            ) -> ::std::result::Result<$crate::sink::__private::Bytes, $crate::sink::SinkError> {
                $crate::sink::Sink::get($inner, key).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [unfinished_uploads $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn unfinished_uploads(
                &$s,
                prefix: &str,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::sink::UnfinishedUpload>,
                $crate::sink::SinkError,
            > {
                $crate::sink::Sink::unfinished_uploads($inner, prefix).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [discard_upload $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn discard_upload(
                &$s,
                upload: &$crate::sink::UnfinishedUpload,
            ) -> ::std::result::Result<(), $crate::sink::SinkError> {
                $crate::sink::Sink::discard_upload($inner, upload).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [retention $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn retention(
                &$s,
                key: &str,
            ) -> ::std::result::Result<
                ::std::option::Option<$crate::sink::Retention>,
                $crate::sink::SinkError,
            > {
                $crate::sink::Sink::retention($inner, key).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [set_retention $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn set_retention(
                &$s,
                key: &str,
                retention: $crate::sink::Retention,
            ) -> ::std::result::Result<(), $crate::sink::SinkError> {
                $crate::sink::Sink::set_retention($inner, key, retention).await
            }
        ] [$($rest)*] $items);
    };
    (@munch $attr:tt $header:tt [$s:tt] [$inner:tt] [$($done:tt)*] [get_range $($rest:ident)*] $items:tt) => {
        $crate::forward_sink!(@munch $attr $header [$s] [$inner] [$($done)*
            async fn get_range(
                &$s,
                key: &str,
                range: ::std::ops::Range<u64>,
            ) -> ::std::result::Result<$crate::sink::__private::Bytes, $crate::sink::SinkError> {
                $crate::sink::Sink::get_range($inner, key, range).await
            }
        ] [$($rest)*] $items);
    };
}

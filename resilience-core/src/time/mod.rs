//! Time and scheduling: the injected [`clock`], the [`stop`] signal that ends a running job,
//! [`schedule`] (when each job runs next, as pure functions of the time) and the [`scheduler`]
//! a service spawns on its runtime.

pub mod clock;
pub mod schedule;
pub mod scheduler;
pub mod stop;

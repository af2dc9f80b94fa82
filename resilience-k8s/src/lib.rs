#![warn(missing_docs)]
//! # resilience-k8s
//!
//! Kubernetes for resilience: the traffic switch of a failover ([`TrafficSwitch`], a
//! [`resilience_core::failover::FailoverStep`]) through the Kubernetes API with the `kube`
//! crate, one kubeconfig context per cluster. The writer Deployment is scaled down in the old
//! region's cluster where it answers and up in the new one (the `scale` subresource), and the
//! Service in the new cluster is pointed at the new region (its selector's
//! [`REGION_LABEL`], written with the `resourceVersion` read, retried on a 409 conflict).
//! What it needs of each cluster is exactly the Role in `examples/k8s/failover-role.yaml`:
//! `get` and `patch` on `deployments/scale`, `get` and `update` on `services`.
//!
//! The module `testing` (feature `testing`) is an API server double that speaks the documented JSON API
//! for those objects: no Kubernetes API server installs on a test machine, so the tests of this
//! crate and of the CLI's failover are contract tests against it.

mod error;
mod switch;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::K8sError;
pub use switch::{ClusterRef, TrafficSwitch, REGION_LABEL};

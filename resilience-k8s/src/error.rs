//! What fails talking to a cluster, naming the cluster, the object and the verb.

/// A failed request to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The kubeconfig cannot be read, or has no such context.
    #[error("kubeconfig{}: context {context:?}: {reason}", path.as_ref().map(|p| format!(" {p}")).unwrap_or_default())]
    Kubeconfig {
        /// The file, where one was named.
        path: Option<String>,
        /// The context asked for.
        context: String,
        /// What is wrong.
        reason: String,
    },
    /// The cluster refused the request for want of a permission.
    #[error(
        "{verb} {resource} {target}: forbidden, the orchestrator's Role needs verb {verb:?} on \
         {resource:?} (examples/k8s/failover-role.yaml): {message}"
    )]
    Forbidden {
        /// The object: `"name" in namespace NS of CONTEXT`.
        target: String,
        /// The resource (`deployments/scale`, `services`).
        resource: &'static str,
        /// The verb refused (`get`, `patch`, `update`).
        verb: &'static str,
        /// The API server's words.
        message: String,
    },
    /// The cluster's API server could not be reached (connection refused, timed out).
    #[error("{verb} {resource} {target}: the cluster does not answer: {message}")]
    Unreachable {
        /// The object: `"name" in namespace NS of CONTEXT`.
        target: String,
        /// The resource.
        resource: &'static str,
        /// The verb.
        verb: &'static str,
        /// The client's words.
        message: String,
    },
    /// The cluster answered with another error.
    #[error("{verb} {resource} {target}: {message}")]
    Api {
        /// The object: `"name" in namespace NS of CONTEXT`.
        target: String,
        /// The resource.
        resource: &'static str,
        /// The verb.
        verb: &'static str,
        /// The API server's words, or the client's.
        message: String,
        /// The HTTP status, where the server answered.
        code: Option<u16>,
    },
}

impl K8sError {
    /// True when the server was never reached (connection refused, timed out): the cluster is
    /// down, as in a lost region.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, K8sError::Unreachable { .. })
    }

    /// True for a 409: the object changed since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            K8sError::Api {
                code: Some(409),
                ..
            }
        )
    }
}

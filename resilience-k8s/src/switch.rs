//! The traffic switch: the writer scaled down in the old clusters, up in the new one, and the
//! Service pointed at the new region.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use resilience_core::failover::{FailoverStep, StepError, StepOutcome};

use crate::error::K8sError;

/// The Service selector label the switch sets to the region's name.
pub const REGION_LABEL: &str = "resilience.io/region";

/// Attempts at updating the Service when another writer changes it in between (409).
const UPDATE_ATTEMPTS: u32 = 5;

/// A cluster and the namespace the service lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRef {
    /// The kubeconfig context that reaches it.
    pub context: String,
    /// The namespace of the Deployment and the Service.
    pub namespace: String,
}

/// The Kubernetes step of a failover.
#[derive(Clone, Debug)]
pub struct TrafficSwitch {
    /// The kubeconfig (default: `KUBECONFIG`, else `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// The old regions' clusters: the writer is scaled to zero in each that answers.
    pub from: Vec<ClusterRef>,
    /// The new region's cluster.
    pub to: ClusterRef,
    /// The writer Deployment's name (the same in every cluster).
    pub deployment: String,
    /// Its replicas in the new cluster.
    pub replicas: i32,
    /// The Service pointed at the new region.
    pub service: String,
    /// The new region's name, written to the Service's selector ([`REGION_LABEL`]).
    pub region: String,
    /// How long a cluster may take to answer before it is taken for unreachable.
    pub timeout: Duration,
}

/// One cluster, reached through its context.
struct Cluster {
    context: String,
    namespace: String,
    client: Client,
}

impl TrafficSwitch {
    fn kubeconfig(&self, context: &str) -> Result<Kubeconfig, K8sError> {
        let read = match &self.kubeconfig {
            Some(p) => Kubeconfig::read_from(p),
            None => Kubeconfig::read(),
        };
        read.map_err(|e| K8sError::Kubeconfig {
            path: self.kubeconfig.as_ref().map(|p| p.display().to_string()),
            context: context.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn cluster(&self, at: &ClusterRef) -> Result<Cluster, K8sError> {
        let kubeconfig = self.kubeconfig(&at.context)?;
        let options = KubeConfigOptions {
            context: Some(at.context.clone()),
            ..Default::default()
        };
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| K8sError::Kubeconfig {
                path: self.kubeconfig.as_ref().map(|p| p.display().to_string()),
                context: at.context.clone(),
                reason: e.to_string(),
            })?;
        config.connect_timeout = Some(self.timeout);
        config.read_timeout = Some(self.timeout);
        config.write_timeout = Some(self.timeout);
        let client = Client::try_from(config).map_err(|e| K8sError::Kubeconfig {
            path: self.kubeconfig.as_ref().map(|p| p.display().to_string()),
            context: at.context.clone(),
            reason: e.to_string(),
        })?;
        Ok(Cluster {
            context: at.context.clone(),
            namespace: at.namespace.clone(),
            client,
        })
    }

    /// Reads, and changes nothing: the writer's replicas in every cluster that answers (the old
    /// ones may not) and the Service in the new one; fails as the switch would on a missing
    /// permission to read, a missing object or an unreachable new cluster. A failover drill's
    /// check that the switch could run.
    pub async fn check(&self) -> Result<Vec<String>, K8sError> {
        let mut seen = Vec::new();
        for old in &self.from {
            let cluster = self.cluster(old).await?;
            match replicas_of(&cluster, &self.deployment).await {
                Ok(n) => seen.push(format!(
                    "{}: {} has {n} replica(s)",
                    cluster.context, self.deployment
                )),
                Err(e) if e.is_unreachable() => {
                    seen.push(format!("{}: does not answer", cluster.context))
                }
                Err(e) => return Err(e),
            }
        }
        let new = self.cluster(&self.to).await?;
        let n = replicas_of(&new, &self.deployment).await?;
        seen.push(format!(
            "{}: {} has {n} replica(s)",
            new.context, self.deployment
        ));
        let api: Api<Service> = Api::namespaced(new.client.clone(), &new.namespace);
        let svc = api
            .get(&self.service)
            .await
            .map_err(|e| named(e, &new, "services", &self.service, "get"))?;
        let region = svc
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get(REGION_LABEL).cloned())
            .unwrap_or_else(|| "no region".into());
        seen.push(format!(
            "{}: service {} selects {REGION_LABEL}={region}",
            new.context, self.service
        ));
        Ok(seen)
    }

    /// Does the switch; returns what it did, a line per cluster.
    pub async fn switch(&self) -> Result<Vec<String>, K8sError> {
        let mut done = Vec::new();
        for old in &self.from {
            let cluster = self.cluster(old).await?;
            match scale(&cluster, &self.deployment, 0).await {
                Ok(before) => done.push(format!(
                    "{}: {} scaled {before} -> 0",
                    cluster.context, self.deployment
                )),
                Err(e) if e.is_unreachable() => done.push(format!(
                    "{}: does not answer, {} not scaled down ({e})",
                    cluster.context, self.deployment
                )),
                Err(e) => return Err(e),
            }
        }
        let new = self.cluster(&self.to).await?;
        let before = scale(&new, &self.deployment, self.replicas).await?;
        done.push(format!(
            "{}: {} scaled {before} -> {}",
            new.context, self.deployment, self.replicas
        ));
        let attempts = point_service(&new, &self.service, &self.region).await?;
        done.push(format!(
            "{}: service {} selects {REGION_LABEL}={}{}",
            new.context,
            self.service,
            self.region,
            if attempts > 1 {
                format!(" ({attempts} attempts: it changed meanwhile)")
            } else {
                String::new()
            }
        ));
        Ok(done)
    }
}

/// Turns a client error into one naming the cluster, the object and the verb.
fn named(
    e: kube::Error,
    cluster: &Cluster,
    resource: &'static str,
    name: &str,
    verb: &'static str,
) -> K8sError {
    let target = format!(
        "{name:?} in namespace {} of {}",
        cluster.namespace, cluster.context
    );
    match e {
        kube::Error::Api(status) if status.code == 403 => K8sError::Forbidden {
            target,
            resource,
            verb,
            message: status.message,
        },
        kube::Error::Api(status) => K8sError::Api {
            target,
            resource,
            verb,
            message: status.message,
            code: Some(status.code),
        },
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => K8sError::Unreachable {
            target,
            resource,
            verb,
            message: e.to_string(),
        },
        other => K8sError::Api {
            target,
            resource,
            verb,
            message: other.to_string(),
            code: None,
        },
    }
}

/// The Deployment's replicas, from its `scale` subresource.
async fn replicas_of(cluster: &Cluster, deployment: &str) -> Result<i32, K8sError> {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let current = api
        .get_scale(deployment)
        .await
        .map_err(|e| named(e, cluster, "deployments/scale", deployment, "get"))?;
    Ok(current.spec.and_then(|s| s.replicas).unwrap_or(0))
}

/// Scales the Deployment through its `scale` subresource; returns the replicas it had.
async fn scale(cluster: &Cluster, deployment: &str, replicas: i32) -> Result<i32, K8sError> {
    let before = replicas_of(cluster, deployment).await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    api.patch_scale(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| named(e, cluster, "deployments/scale", deployment, "patch"))?;
    Ok(before)
}

/// Sets the Service's selector to the region, writing with the `resourceVersion` read and
/// reading again on a conflict; returns the attempts it took.
async fn point_service(cluster: &Cluster, service: &str, region: &str) -> Result<u32, K8sError> {
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut attempt = 1;
    loop {
        let mut svc = api
            .get(service)
            .await
            .map_err(|e| named(e, cluster, "services", service, "get"))?;
        let spec = svc.spec.get_or_insert_with(Default::default);
        let selector = spec.selector.get_or_insert_with(BTreeMap::new);
        if selector.get(REGION_LABEL).map(String::as_str) == Some(region) {
            return Ok(attempt);
        }
        selector.insert(REGION_LABEL.to_owned(), region.to_owned());
        match api.replace(service, &PostParams::default(), &svc).await {
            Ok(_) => return Ok(attempt),
            Err(e) => {
                let e = named(e, cluster, "services", service, "update");
                if e.is_conflict() && attempt < UPDATE_ATTEMPTS {
                    tracing::info!(
                        service,
                        attempt,
                        "the service changed meanwhile; reading it again"
                    );
                    attempt += 1;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

#[async_trait]
impl FailoverStep for TrafficSwitch {
    fn name(&self) -> String {
        "switch kubernetes traffic".into()
    }

    fn describe(&self) -> String {
        let olds: Vec<&str> = self.from.iter().map(|c| c.context.as_str()).collect();
        format!(
            "scale {} to 0 in {} (where it answers) and to {} in {}; point service {} at {REGION_LABEL}={}",
            self.deployment,
            if olds.is_empty() {
                "no old cluster".to_owned()
            } else {
                olds.join(", ")
            },
            self.replicas,
            self.to.context,
            self.service,
            self.region
        )
    }

    async fn run(&self) -> Result<StepOutcome, StepError> {
        Ok(StepOutcome::done(self.switch().await?.join("; ")))
    }
}

//! An API server double (feature `testing`) for contract tests: it speaks the documented JSON
//! API of the objects the failover uses — a Deployment's `scale` subresource (GET, merge
//! PATCH), Services (GET, PUT with `metadata.resourceVersion`, 409 when it is stale) — with
//! bearer-token authentication, 403 `Status` answers for any verb on any resource it was not
//! granted (as RBAC would), and a log of every request. It is not Kubernetes: it checks that
//! the client keeps the API's contract, not that a cluster behaves.

// A refusal is an HTTP response, built once and returned as is.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// A permission: a resource (`deployments/scale`, `services`) and a verb (`get`, `patch`,
/// `update`).
pub type Permission = (String, String);

#[derive(Default)]
struct DoubleState {
    token: String,
    granted: BTreeSet<Permission>,
    used: BTreeSet<Permission>,
    requests: Vec<String>,
    scales: BTreeMap<(String, String), i64>,
    services: BTreeMap<(String, String), Value>,
    version: u64,
    conflicts: u32,
}

/// A running double on a loopback port; stopped when dropped.
pub struct ApiDouble {
    /// Its URL (`http://127.0.0.1:PORT`).
    pub url: String,
    state: Arc<Mutex<DoubleState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ApiDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

impl ApiDouble {
    /// Starts a double that accepts `token` and grants exactly `granted`.
    pub async fn start(token: &str, granted: &[Permission]) -> ApiDouble {
        let state = Arc::new(Mutex::new(DoubleState {
            token: token.to_owned(),
            granted: granted.iter().cloned().collect(),
            version: 100,
            ..Default::default()
        }));
        let app = Router::new()
            .route(
                "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
                get(scale).patch(scale),
            )
            .route(
                "/api/v1/namespaces/{ns}/services/{name}",
                get(service).put(service),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API double");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiDouble { url, state, server }
    }

    /// Stops it: the cluster becomes unreachable.
    pub fn stop(&self) {
        self.server.abort();
    }

    /// Adds a Deployment with `replicas`.
    pub fn deployment(&self, namespace: &str, name: &str, replicas: i64) {
        let mut s = self.state.lock().unwrap();
        s.scales
            .insert((namespace.to_owned(), name.to_owned()), replicas);
    }

    /// Adds a Service selecting `selector`.
    pub fn service(&self, namespace: &str, name: &str, selector: &[(&str, &str)]) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let selector: BTreeMap<&str, &str> = selector.iter().cloned().collect();
        let svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": s.version.to_string(),
            },
            "spec": { "selector": selector, "ports": [{ "port": 5432, "protocol": "TCP" }] },
        });
        s.services
            .insert((namespace.to_owned(), name.to_owned()), svc);
    }

    /// The next `n` updates of any Service find it changed by another writer (409).
    pub fn conflicts(&self, n: u32) {
        self.state.lock().unwrap().conflicts = n;
    }

    /// A Deployment's replicas.
    pub fn replicas(&self, namespace: &str, name: &str) -> Option<i64> {
        let s = self.state.lock().unwrap();
        s.scales
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// A Service's selector.
    pub fn selector(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let s = self.state.lock().unwrap();
        let svc = s.services.get(&(namespace.to_owned(), name.to_owned()))?;
        serde_json::from_value(svc["spec"]["selector"].clone()).ok()
    }

    /// Every request, as `METHOD path -> status`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every permission a request needed and was granted.
    pub fn used(&self) -> BTreeSet<Permission> {
        self.state.lock().unwrap().used.clone()
    }
}

/// Authenticates and authorizes a request, recording the permission it used.
fn admit(
    s: &mut DoubleState,
    headers: &HeaderMap,
    method: &Method,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Result<(), Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(s.token.as_str()) {
        return Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        ));
    }
    let verb = match *method {
        Method::GET => "get",
        Method::PATCH => "patch",
        Method::PUT => "update",
        _ => "unknown",
    };
    let permission = (resource.to_owned(), verb.to_owned());
    if !s.granted.contains(&permission) {
        let (group, plural) = match resource.split_once('/') {
            Some((r, _)) => ("apps", r),
            None => ("", resource),
        };
        return Err(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{plural}{} \"{name}\" is forbidden: User \"system:serviceaccount:{namespace}:resilience-failover\" \
                 cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{namespace}\"",
                if group.is_empty() { String::new() } else { format!(".{group}") }
            ),
        ));
    }
    s.used.insert(permission);
    Ok(())
}

/// Answers one request with `answer` (its refusal as a response too), and logs it.
fn handle(
    state: &Mutex<DoubleState>,
    method: &Method,
    what: String,
    answer: impl FnOnce(&mut DoubleState) -> Result<Response, Response>,
) -> Response {
    let mut s = state.lock().unwrap();
    let response = answer(&mut s).unwrap_or_else(|e| e);
    s.requests
        .push(format!("{method} {what} -> {}", response.status().as_u16()));
    response
}

async fn scale(
    State(state): State<Arc<Mutex<DoubleState>>>,
    Path((ns, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let what = format!("deployments/scale {ns}/{name}");
    handle(&state, &method, what, |s| {
        admit(s, &headers, &method, "deployments/scale", &ns, &name)?;
        let key = (ns.clone(), name.clone());
        let Some(current) = s.scales.get(&key).copied() else {
            return Err(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("deployments.apps \"{name}\" not found"),
            ));
        };
        let replicas = if method == Method::PATCH {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if content_type != "application/merge-patch+json" {
                return Err(status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format: {content_type}"),
                ));
            }
            let patch: Value = serde_json::from_slice(&body)
                .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
            let Some(r) = patch["spec"]["replicas"].as_i64() else {
                return Err(status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "spec.replicas: Required value".into(),
                ));
            };
            s.scales.insert(key, r);
            s.version += 1;
            r
        } else {
            current
        };
        Ok(Json(json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": { "name": name, "namespace": ns, "resourceVersion": s.version.to_string() },
            "spec": { "replicas": replicas },
            "status": { "replicas": current },
        }))
        .into_response())
    })
}

async fn service(
    State(state): State<Arc<Mutex<DoubleState>>>,
    Path((ns, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let what = format!("services {ns}/{name}");
    handle(&state, &method, what, |s| {
        admit(s, &headers, &method, "services", &ns, &name)?;
        let key = (ns.clone(), name.clone());
        let Some(current) = s.services.get(&key).cloned() else {
            return Err(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("services \"{name}\" not found"),
            ));
        };
        if method != Method::PUT {
            return Ok(Json(current).into_response());
        }
        let mut new: Value = serde_json::from_slice(&body)
            .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
        let sent = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let stale = sent
            != current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("");
        if s.conflicts > 0 || stale {
            if s.conflicts > 0 {
                // Another writer got there first.
                s.conflicts -= 1;
                s.version += 1;
                let version = s.version.to_string();
                if let Some(svc) = s.services.get_mut(&key) {
                    svc["metadata"]["resourceVersion"] = json!(version);
                }
            }
            return Err(status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on services \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again"
                ),
            ));
        }
        s.version += 1;
        new["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.services.insert(key, new.clone());
        Ok(Json(new).into_response())
    })
}

/// A kubeconfig naming each `(context, double)` as a cluster of its own, reached with `token`.
pub fn kubeconfig(clusters: &[(&str, &str)], token: &str) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, url) in clusters {
        out.push_str(&format!("- name: {name}\n  cluster:\n    server: {url}\n"));
    }
    out.push_str("users:\n- name: failover\n  user:\n");
    out.push_str(&format!("    token: {token}\n"));
    out.push_str("contexts:\n");
    for (name, _) in clusters {
        out.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {name}\n    user: failover\n"
        ));
    }
    if let Some((first, _)) = clusters.first() {
        out.push_str(&format!("current-context: {first}\n"));
    }
    out
}

/// The permissions a Role manifest grants: each rule's resources times its verbs (the simple
/// flow-style lists `examples/k8s/failover-role.yaml` is written in).
pub fn role_permissions(manifest: &str) -> Vec<Permission> {
    let list = |line: &str| -> Vec<String> {
        line.split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(items, _)| {
                items
                    .split(',')
                    .map(|i| i.trim().trim_matches('"').to_owned())
                    .filter(|i| !i.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut resources: Vec<String> = Vec::new();
    for line in manifest.lines() {
        let t = line.trim().trim_start_matches("- ");
        if t.starts_with("resources:") {
            resources = list(t);
        } else if t.starts_with("verbs:") {
            for r in &resources {
                for v in list(t) {
                    out.push((r.clone(), v));
                }
            }
        }
    }
    out
}

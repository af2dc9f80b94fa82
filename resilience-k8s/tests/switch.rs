//! The traffic switch against the API server double (a contract test: no Kubernetes API server
//! installs here). Each cluster is a double of its own, reached through its kubeconfig context.

use std::path::PathBuf;
use std::time::Duration;

use resilience_core::failover::FailoverStep;
use resilience_k8s::testing::{kubeconfig, role_permissions, ApiDouble, Permission};
use resilience_k8s::{ClusterRef, K8sError, TrafficSwitch, REGION_LABEL};

const TOKEN: &str = "failover-token";

fn role() -> Vec<Permission> {
    let manifest = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s/failover-role.yaml"),
    )
    .unwrap();
    let granted = role_permissions(&manifest);
    assert_eq!(granted.len(), 4, "{granted:?}");
    granted
}

/// Two clusters with the writer running in A and the Service selecting region a.
async fn clusters(granted: &[Permission]) -> (ApiDouble, ApiDouble) {
    let a = ApiDouble::start(TOKEN, granted).await;
    let b = ApiDouble::start(TOKEN, granted).await;
    a.deployment("billing", "writer", 2);
    b.deployment("billing", "writer", 0);
    for c in [&a, &b] {
        c.service(
            "billing",
            "billing-db",
            &[("app", "billing-db"), (REGION_LABEL, "a")],
        );
    }
    (a, b)
}

fn switch(dir: &tempfile::TempDir, a: &ApiDouble, b: &ApiDouble) -> TrafficSwitch {
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        kubeconfig(&[("cluster-a", &a.url), ("cluster-b", &b.url)], TOKEN),
    )
    .unwrap();
    TrafficSwitch {
        kubeconfig: Some(path),
        from: vec![ClusterRef {
            context: "cluster-a".into(),
            namespace: "billing".into(),
        }],
        to: ClusterRef {
            context: "cluster-b".into(),
            namespace: "billing".into(),
        },
        deployment: "writer".into(),
        replicas: 2,
        service: "billing-db".into(),
        region: "b".into(),
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn the_writer_moves_to_the_new_cluster_and_the_service_follows_with_exactly_the_roles_permissions(
) {
    let granted = role();
    let (a, b) = clusters(&granted).await;
    let dir = tempfile::tempdir().unwrap();
    let step = switch(&dir, &a, &b);
    assert!(step.describe().contains("cluster-a"));
    let done = step.run().await.unwrap();
    assert_eq!(a.replicas("billing", "writer"), Some(0));
    assert_eq!(b.replicas("billing", "writer"), Some(2));
    let selector = b.selector("billing", "billing-db").unwrap();
    assert_eq!(selector[REGION_LABEL], "b");
    assert_eq!(
        selector["app"], "billing-db",
        "the rest of the selector is kept"
    );
    assert!(
        done.detail.contains("cluster-a: writer scaled 2 -> 0"),
        "{}",
        done.detail
    );
    // The Role grants nothing the switch does not use.
    let mut used = a.used();
    used.extend(b.used());
    let granted: std::collections::BTreeSet<Permission> = granted.into_iter().collect();
    assert_eq!(
        used,
        granted,
        "requests: {:?} {:?}",
        a.requests(),
        b.requests()
    );

    // Again: nothing changes (the service already selects b), nothing fails.
    step.run().await.unwrap();
    assert_eq!(b.replicas("billing", "writer"), Some(2));
}

#[tokio::test]
async fn a_service_changed_meanwhile_is_read_again_and_a_lost_old_cluster_is_named_not_fatal() {
    let (a, b) = clusters(&role()).await;
    let dir = tempfile::tempdir().unwrap();
    let step = switch(&dir, &a, &b);
    a.stop();
    b.conflicts(2);
    let done = step.run().await.unwrap();
    assert!(
        done.detail.contains("cluster-a: does not answer"),
        "{}",
        done.detail
    );
    assert!(done.detail.contains("3 attempts"), "{}", done.detail);
    assert_eq!(
        b.selector("billing", "billing-db").unwrap()[REGION_LABEL],
        "b"
    );
    let conflicts = b
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT services") && r.ends_with("409"))
        .count();
    assert_eq!(conflicts, 2, "{:?}", b.requests());
}

#[tokio::test]
async fn a_missing_permission_fails_the_step_naming_the_verb_and_the_resource() {
    let without_update: Vec<Permission> = role()
        .into_iter()
        .filter(|(r, v)| !(r == "services" && v == "update"))
        .collect();
    let (a, b) = clusters(&without_update).await;
    let dir = tempfile::tempdir().unwrap();
    let err = switch(&dir, &a, &b).switch().await.unwrap_err();
    assert!(
        matches!(
            err,
            K8sError::Forbidden {
                verb: "update",
                resource: "services",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("cluster-b") && text.contains("billing-db"),
        "{text}"
    );
    assert!(
        text.contains("cannot update resource \"services\""),
        "{text}"
    );

    // A wrong token is refused too, and named.
    let (a, b) = clusters(&role()).await;
    let step = switch(&dir, &a, &b);
    let path = step.kubeconfig.clone().unwrap();
    std::fs::write(
        &path,
        kubeconfig(&[("cluster-a", &a.url), ("cluster-b", &b.url)], "stolen"),
    )
    .unwrap();
    let err = step.switch().await.unwrap_err().to_string();
    assert!(
        err.contains("cluster-a") && err.contains("Unauthorized"),
        "{err}"
    );

    // A context the kubeconfig lacks is named.
    let mut step = switch(&dir, &a, &b);
    step.to.context = "cluster-z".into();
    step.from.clear();
    let err = step.switch().await.unwrap_err().to_string();
    assert!(err.contains("cluster-z"), "{err}");
}

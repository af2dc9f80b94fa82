//! The Postgres catalog passes the catalog conformance suite, against a real PostgreSQL.

mod support;

use resilience_core::catalog::{conformance, Catalog};
use resilience_pg::catalog::PgCatalog;

#[tokio::test]
async fn the_postgres_catalog_conforms() {
    let lab = support::Lab::new().await;
    let cluster = lab.cluster("catalog").await;
    let catalog = PgCatalog::connect(&cluster.dsn(), "resilience catalog")
        .await
        .unwrap();
    conformance::run_all(&catalog).await;
    // A second connection to the same schema finds the tables and the records as they were.
    let again = PgCatalog::connect(&cluster.dsn(), "resilience catalog")
        .await
        .unwrap();
    let held = again.get("round-trip-full").await.unwrap().unwrap();
    assert!(held.legal_hold);
}

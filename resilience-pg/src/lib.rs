//! Postgres adapter for resilience (base backups, WAL archiving, PITR): its work lives in its own issue.

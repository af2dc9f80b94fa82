//! Redis adapter for resilience (SCAN + DUMP + PTTL backups, RESTORE): its work lives in its own issue.

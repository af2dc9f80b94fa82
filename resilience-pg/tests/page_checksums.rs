//! The page checksum of `resilience_pg::page_checksum` against the pages of a real cluster:
//! every page `initdb --data-checksums` writes carries the checksum Postgres computed, and
//! `pg_checksums --check` agrees with us on a damaged one. Needs PostgreSQL's server programs
//! (PG_BIN or /usr/lib/postgresql/N/bin); a missing installation fails the test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use resilience_pg::cluster::{command_as_owner, find_bindir, run};
use resilience_pg::lsn::Lsn;
use resilience_pg::page_checksum::{
    check_page, pg_checksum_page, stored_checksum, PageVerdict, DEFAULT_SEGMENT_BLOCKS, PAGE_SIZE,
};
use resilience_pg::page_verify::relation_segment;

/// A fresh, stopped cluster made by `initdb --data-checksums` (as the `postgres` user when we
/// are root, since Postgres refuses root).
async fn initdb(dir: &Path) -> PathBuf {
    let bindir = find_bindir(None);
    assert!(
        bindir.join("initdb").exists(),
        "no initdb in {} (install postgresql-15, or set PG_BIN)",
        bindir.display()
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pgdata = dir.join("pgdata");
    std::fs::create_dir(&pgdata).unwrap();
    std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let f: Vec<&str> = passwd
            .lines()
            .find(|l| l.starts_with("postgres:"))
            .expect("running as root, the test needs a `postgres` user to run initdb as")
            .split(':')
            .collect();
        std::os::unix::fs::chown(
            &pgdata,
            Some(f[2].parse().unwrap()),
            Some(f[3].parse().unwrap()),
        )
        .unwrap();
    }
    let mut cmd = command_as_owner(&bindir, "initdb", &pgdata).unwrap();
    cmd.arg("-D")
        .arg(&pgdata)
        .args(["--data-checksums", "-U", "postgres", "--auth=trust"]);
    run(cmd, "initdb --data-checksums").await.unwrap();
    pgdata
}

/// Every relation file of the data directory, relative to it.
fn relation_files(pgdata: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for top in ["global", "base"] {
        let mut stack = vec![pgdata.join(top)];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(pgdata).unwrap().to_str().unwrap().to_owned();
                    if relation_segment(&rel).is_some() {
                        out.push(rel);
                    }
                }
            }
        }
    }
    out.sort();
    out
}

fn page_at(data: &[u8], block: usize) -> &[u8; PAGE_SIZE] {
    data[block * PAGE_SIZE..(block + 1) * PAGE_SIZE]
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn every_page_of_a_fresh_checksummed_cluster_carries_our_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let pgdata = initdb(dir.path()).await;
    let files = relation_files(&pgdata);
    assert!(files.len() > 100, "only {} relation files", files.len());
    let mut checked = 0;
    for file in &files {
        let data = std::fs::read(pgdata.join(file)).unwrap();
        let segment = relation_segment(file).unwrap();
        for block in 0..data.len() / PAGE_SIZE {
            let page = page_at(&data, block);
            let relation_block = segment * DEFAULT_SEGMENT_BLOCKS + block as u32;
            match check_page(page, relation_block, Lsn(u64::MAX)) {
                PageVerdict::New => continue,
                PageVerdict::Valid => checked += 1,
                other => panic!("{file} block {block}: {other:?}"),
            }
            // The known answer: what Postgres stored in pd_checksum.
            assert_eq!(
                pg_checksum_page(page, relation_block),
                stored_checksum(page),
                "{file} block {block}"
            );
        }
    }
    assert!(checked > 500, "only {checked} pages checked");
    // pg_database's first page, as a fixed example.
    let data = std::fs::read(pgdata.join("global/1262")).unwrap();
    let first = page_at(&data, 0);
    assert_ne!(stored_checksum(first), 0);
    assert_eq!(pg_checksum_page(first, 0), stored_checksum(first));
}

#[tokio::test]
async fn a_damaged_page_fails_for_us_and_for_pg_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let pgdata = initdb(dir.path()).await;
    // pg_class of the template1 database has several pages.
    let file = relation_files(&pgdata)
        .into_iter()
        .find(|f| f.starts_with("base/1/") && f.ends_with("/1259"))
        .expect("pg_class of template1");
    let path = pgdata.join(&file);
    let mut data = std::fs::read(&path).unwrap();
    assert!(data.len() >= 2 * PAGE_SIZE);
    data[PAGE_SIZE + 4000] ^= 0x5A;
    std::fs::write(&path, &data).unwrap();
    assert!(matches!(
        check_page(page_at(&data, 1), 1, Lsn(u64::MAX)),
        PageVerdict::Corrupt { .. }
    ));
    assert_eq!(
        check_page(page_at(&data, 0), 0, Lsn(u64::MAX)),
        PageVerdict::Valid
    );
    let mut cmd = command_as_owner(&find_bindir(None), "pg_checksums", &pgdata).unwrap();
    cmd.arg("--check").arg("-D").arg(&pgdata);
    let out = cmd.output().await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pg_checksums found nothing: {said}");
    assert!(
        said.contains(&format!("{file}\", block 1")),
        "pg_checksums: {said}"
    );
}

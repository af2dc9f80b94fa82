//! Throw-away PostgreSQL clusters for the adapter's tests: initdb on a free loopback port, as
//! the `postgres` user when the tests run as root (Postgres refuses to run as root: the
//! programs run through `setpriv`), archiving WAL into a spool directory from which
//! [`Lab::push_wal`] pushes it into the lab's in-memory repository. A missing Postgres
//! installation fails the test, loudly.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::backup::BackupReport;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::MemorySink;
use resilience_pg::archive::WalArchive;
use resilience_pg::base::PgBaseSource;

pub use resilience_pg::testing::{chown, ClusterOptions, TestCluster as Cluster};

/// A test's directory (owned by the Postgres user), an in-memory repository, and the spool
/// directory the clusters archive into.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
    /// The WAL source name.
    pub source: String,
}

impl Lab {
    pub async fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("rpgd").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(dir.path());
        let repo = Repository::init(
            Arc::new(MemorySink::new()),
            &KeyFileProvider::from_key([9; 32]),
            InitOptions::default(),
        )
        .await
        .unwrap();
        let lab = Lab {
            dir,
            repo,
            source: "main".into(),
        };
        std::fs::create_dir(lab.spool()).unwrap();
        chown(&lab.spool());
        lab
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Where clusters archive WAL (`archive_command` copies there).
    pub fn spool(&self) -> PathBuf {
        self.path("spool")
    }

    /// A directory the Postgres user can reach (scratch directories of drills).
    pub fn pg_dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir(&p).unwrap();
        chown(&p);
        p
    }

    /// Pushes every spooled WAL file into the repository's archive; returns how many.
    pub async fn push_wal(&self) -> usize {
        let archive = WalArchive::new(&self.repo, &self.source).unwrap();
        let mut n = 0;
        let mut names: Vec<_> = std::fs::read_dir(self.spool())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let content = std::fs::read(self.spool().join(&name)).unwrap();
            archive
                .push(&name, content.into())
                .await
                .unwrap_or_else(|e| panic!("push {name}: {e}"));
            n += 1;
        }
        n
    }

    /// A base backup of `cluster` as source `main`, which must succeed.
    pub async fn base_backup(&self, cluster: &Cluster) -> BackupReport {
        self.repo
            .backup(
                &PgBaseSource::new(&cluster.pgdata, cluster.dsn()).with_id("main"),
                Default::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("base backup of {}: {e}", cluster.pgdata.display()))
    }

    /// A new cluster (1 MiB WAL segments, archiving into the spool), started.
    pub async fn cluster(&self, name: &str) -> Cluster {
        let options = ClusterOptions {
            archive_command: Some(format!(
                "test ! -f {spool}/%f && cp %p {spool}/%f",
                spool = self.spool().display()
            )),
            socket_dir: Some(self.dir.path().to_owned()),
            ..Default::default()
        };
        let cluster = Cluster::init(&self.path(name), &options);
        cluster.start();
        cluster
    }
}

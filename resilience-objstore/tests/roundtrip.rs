//! Any tree of files — empty and large, sparse and random — restores byte-identical with modes
//! and mtimes through the engine, on memory, local-disk, Garage, Azurite and fake-gcs-server
//! repositories.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::Sink;
use resilience_core::source::fs::{DirSource, DirTarget};
use resilience_objstore::{open_sink, open_sink_or_create};

#[derive(Clone, Debug)]
enum Node {
    File {
        content: Vec<u8>,
        sparse_len: u64,
        mode: u32,
    },
    Dir(Vec<(String, Node)>),
    Link(String),
}

fn arb_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "a.txt", "a b", "ünï", "x-🦀", "deep", "z", "0", "file.bin",
    ])
    .prop_map(str::to_owned)
}

fn arb_node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            prop::sample::select(vec![0u64, 0, 5 << 20]),
            prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o444])
        )
            .prop_map(|(content, sparse_len, mode)| Node::File {
                content,
                sparse_len,
                mode
            }),
        arb_name().prop_map(Node::Link),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..6)
            .prop_map(|m| Node::Dir(m.into_iter().collect()))
    })
}

fn write(path: &Path, node: &Node, seed: &mut u64) {
    match node {
        Node::File {
            content,
            sparse_len,
            mode,
        } => {
            let mut bytes = content.clone();
            if content.len() > 2000 {
                // Large random content: a couple of MiB, so it spans chunks.
                bytes = (0..(2 << 20))
                    .map(|_| {
                        *seed ^= *seed << 13;
                        *seed ^= *seed >> 7;
                        *seed ^= *seed << 17;
                        *seed as u8
                    })
                    .collect();
            }
            std::fs::write(path, &bytes).unwrap();
            if *sparse_len > 0 {
                let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(*sparse_len).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_at(b"middle", sparse_len / 2).unwrap();
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).unwrap();
            filetime::set_file_mtime(
                path,
                filetime::FileTime::from_unix_time(
                    1_700_000_000 + (*seed % 1000) as i64,
                    123_456_789,
                ),
            )
            .unwrap();
        }
        Node::Dir(children) => {
            std::fs::create_dir(path).unwrap();
            for (name, child) in children {
                write(&path.join(name), child, seed);
            }
            filetime::set_file_mtime(path, filetime::FileTime::from_unix_time(1_600_000_000, 5))
                .unwrap();
        }
        Node::Link(target) => std::os::unix::fs::symlink(target, path).unwrap(),
    }
}

fn assert_same(a: &Path, b: &Path) {
    assert_same_at(a, b, true)
}

/// The root is not an entry of the snapshot: only its content is compared.
fn assert_same_at(a: &Path, b: &Path, root: bool) {
    let (ma, mb) = (
        std::fs::symlink_metadata(a).unwrap(),
        std::fs::symlink_metadata(b).unwrap(),
    );
    assert_eq!(ma.file_type(), mb.file_type(), "{}", a.display());
    if ma.file_type().is_symlink() {
        assert_eq!(
            std::fs::read_link(a).unwrap(),
            std::fs::read_link(b).unwrap()
        );
        return;
    }
    if !root {
        assert_eq!(ma.mode(), mb.mode(), "mode of {}", a.display());
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {}",
            a.display()
        );
    }
    if ma.is_dir() {
        let mut na: Vec<_> = std::fs::read_dir(a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut nb: Vec<_> = std::fs::read_dir(b)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        na.sort();
        nb.sort();
        assert_eq!(na, nb, "entries of {}", a.display());
        for n in na {
            assert_same_at(&a.join(&n), &b.join(&n), false);
        }
    } else {
        assert_eq!(ma.len(), mb.len());
        assert!(
            std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
            "content of {}",
            a.display()
        );
    }
}

async fn round_trip(sink: Arc<dyn Sink>, tree: &Node) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut seed = 0x1234_5678_9abc_def1;
    match tree {
        Node::Dir(_) => write(&src, tree, &mut seed),
        other => write(
            &src,
            &Node::Dir(vec![("only".into(), other.clone())]),
            &mut seed,
        ),
    }
    let repo = backs_up_and_restores(sink, &src, &work.path().join("out")).await;
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
}

/// Backs up `src` into a new repository in `sink`, restores it into `out`, and checks the two
/// trees are the same; returns the repository.
async fn backs_up_and_restores(sink: Arc<dyn Sink>, src: &Path, out: &Path) -> Repository {
    let repo = Repository::init(
        sink,
        &KeyFileProvider::from_key([5; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    let report = repo
        .backup(&DirSource::new(src), Default::default())
        .await
        .unwrap();
    repo.restore(&report.record.id, &DirTarget::new(out), Default::default())
        .await
        .unwrap();
    assert_same(src, out);
    repo
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_tree_round_trips_through_memory_and_local_disk(tree in arb_node()) {
        runtime().block_on(async {
            round_trip(open_sink("memory://").unwrap(), &tree).await;
            let dir = tempfile::tempdir().unwrap();
            round_trip(open_sink_or_create(dir.path().to_str().unwrap()).unwrap(), &tree).await;
        });
    }
}

/// A file name: any bytes a Unix file name can hold (all but `/` and NUL, not `.` or `..`, not
/// necessarily UTF-8), from one byte to the 255 that ext4 allows.
fn arb_file_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(1u8..=255, 1..40),
        1 => proptest::collection::vec(1u8..=255, 255..=255),
    ]
    .prop_map(|mut v| {
        for b in &mut v {
            if *b == b'/' {
                *b = b'%';
            }
        }
        v
    })
    .prop_filter("not . or ..", |v| v != b"." && v != b"..")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Names with every byte a file name can hold, as files, directories and symlink targets.
    #[test]
    fn any_file_name_round_trips(
        names in proptest::collection::btree_set(arb_file_name(), 1..5),
        dir in arb_file_name(),
    ) {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        runtime().block_on(async {
            let work = tempfile::tempdir().unwrap();
            let src = work.path().join("src");
            let sub = src.join(OsStr::from_bytes(&dir));
            std::fs::create_dir_all(&sub).unwrap();
            for (i, name) in names.iter().enumerate() {
                let name = OsStr::from_bytes(name);
                std::fs::write(sub.join(name), name.as_bytes()).unwrap();
                if i == 0 {
                    std::os::unix::fs::symlink(name, src.join("link")).unwrap();
                }
            }
            let out = work.path().join("out");
            backs_up_and_restores(open_sink("memory://").unwrap(), &src, &out).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    #[test]
    fn any_tree_round_trips_through_azurite(tree in arb_node()) {
        let url = common::azurite_url("roundtrip");
        runtime().block_on(async { round_trip(open_sink(&url).unwrap(), &tree).await });
    }

    #[test]
    fn any_tree_round_trips_through_fake_gcs_server(tree in arb_node()) {
        let url = common::gcs_url("roundtrip");
        runtime().block_on(async { round_trip(open_sink(&url).unwrap(), &tree).await });
    }

    #[test]
    fn any_tree_round_trips_through_garage(tree in arb_node()) {
        let url = common::garage_url("roundtrip");
        runtime().block_on(async { round_trip(open_sink(&url).unwrap(), &tree).await });
    }
}

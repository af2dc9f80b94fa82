//! The quick start: no service at all. Backs up a generated directory into a local repository,
//! lists the catalog, verifies, restores into another directory and proves the copy identical.
//!
//! `cargo run --release -p resilience-examples --example quickstart [-- DIR_TO_BACK_UP]`

use std::path::{Path, PathBuf};

use resilience_core::catalog::{Catalog, CatalogQuery};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::source::fs::{DirSource, DirTarget};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = tempfile::tempdir()?;
    let data = match std::env::args().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = work.path().join("exports");
            generate(&dir)?;
            dir
        }
    };
    let repo_dir = work.path().join("repo");
    let key = KeyFileProvider::generate(&work.path().join("repo.key"))?;

    let sink = resilience_objstore::open_sink_or_create(repo_dir.to_str().expect("utf-8 path"))?;
    let repo = Repository::init(sink, &key, InitOptions::default()).await?;
    println!("repository   {}", repo_dir.display());

    let first = repo
        .backup(&DirSource::new(&data), Default::default())
        .await?;
    let second = repo
        .backup(&DirSource::new(&data), Default::default())
        .await?;
    for r in [&first, &second] {
        println!(
            "backup       {}  {} entries, {} bytes, {} new, {} stored, {:?}",
            r.record.id,
            r.record.entries,
            r.record.logical_bytes,
            r.record.new_bytes,
            r.record.stored_bytes,
            r.duration
        );
    }

    for record in repo.catalog().list(&CatalogQuery::default()).await? {
        println!(
            "catalog      {}  {}  {}  {}",
            record.id, record.source.id, record.status, record.started_at
        );
    }

    let verification = repo.verify(VerifyOptions { full: true }).await?;
    println!(
        "verify       {} snapshots, {} packs, {} blobs re-hashed: {}",
        verification.snapshots_checked,
        verification.packs_checked,
        verification.blobs_checked,
        if verification.is_ok() {
            "sound"
        } else {
            "DAMAGED"
        }
    );
    if !verification.is_ok() {
        return Err(format!("damaged: {:?}", verification.damaged).into());
    }

    let restored = work.path().join("restored");
    let report = repo
        .restore("latest", &DirTarget::new(&restored), Default::default())
        .await?;
    println!(
        "restore      {} entries, {} bytes in {:?}",
        report.entries, report.bytes, report.duration
    );

    let compared = compare(&data, &restored)?;
    println!("identical    {compared} files compared byte for byte");
    Ok(())
}

/// A small mixed tree: text, random bytes, nested directories, an empty file, a symlink.
fn generate(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("reports/2026"))?;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let text: String = (0..50_000)
        .map(|i| format!("invoice {i},customer {},amount {}.00\n", i % 97, i % 1000))
        .collect();
    std::fs::write(dir.join("reports/2026/invoices.csv"), text)?;
    std::fs::write(dir.join("uploads.bin"), random(8 << 20))?;
    std::fs::write(dir.join("token.json"), br#"{"rotated":"2026-11-25"}"#)?;
    std::fs::write(dir.join("empty"), b"")?;
    std::os::unix::fs::symlink("reports/2026/invoices.csv", dir.join("latest.csv"))?;
    Ok(())
}

/// Compares two trees: same entries, same bytes, same symlink targets. Returns files compared.
fn compare(a: &Path, b: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let mut files = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(a.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        let mut other: Vec<_> = std::fs::read_dir(b.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        other.sort();
        if names != other {
            return Err(format!("{} differs: {names:?} vs {other:?}", rel.display()).into());
        }
        for name in names {
            let (pa, pb) = (a.join(&rel).join(&name), b.join(&rel).join(&name));
            let ma = std::fs::symlink_metadata(&pa)?;
            if ma.file_type().is_symlink() {
                if std::fs::read_link(&pa)? != std::fs::read_link(&pb)? {
                    return Err(format!("symlink {} differs", pa.display()).into());
                }
            } else if ma.is_dir() {
                stack.push(rel.join(&name));
            } else {
                if std::fs::read(&pa)? != std::fs::read(&pb)? {
                    return Err(format!("{} differs", pa.display()).into());
                }
                files += 1;
            }
        }
    }
    Ok(files)
}

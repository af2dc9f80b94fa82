//! Generates the reproducible benchmark data set.
//!
//! `gen-dataset DIR [GIB] [SEED] [SMALL_MAX_KIB]`: about GIB GiB (default 1) of files — one third
//! random bytes, one third text, one third database-like pages — as many small files
//! (1 KiB to SMALL_MAX_KIB, default 64), medium ones (1–16 MiB) and a few large ones (over
//! 100 MiB) in nested directories. The small files take a tenth of the bytes, so a lower
//! SMALL_MAX_KIB gives more of them (40 gives about 10,000 files for 2 GiB).

use std::io::Write;
use std::path::PathBuf;

use resilience_benches::{generate, Kind, Xorshift};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .expect("usage: gen-dataset DIR [GIB] [SEED] [SMALL_MAX_KIB]"),
    );
    let gib: f64 = args
        .get(2)
        .map(|s| s.parse().expect("GIB is a number"))
        .unwrap_or(1.0);
    let seed: u64 = args
        .get(3)
        .map(|s| s.parse().expect("SEED is a number"))
        .unwrap_or(42);
    let small_max_kib: u64 = args
        .get(4)
        .map(|s| s.parse().expect("SMALL_MAX_KIB is a number"))
        .unwrap_or(64);
    assert!(small_max_kib >= 1, "SMALL_MAX_KIB is at least 1");
    let total = (gib * (1u64 << 30) as f64) as u64;
    let mut rng = Xorshift::new(seed);
    let kinds = [Kind::Random, Kind::Text, Kind::Pages];
    let mut written = 0u64;
    let mut n = 0u64;
    // Budget: 10% small files, 40% medium, 50% large.
    let plan = [
        (total / 10, 1u64 << 10, small_max_kib << 10),
        (total * 4 / 10, 1 << 20, 16 << 20),
        (total / 2, 100 << 20, 160 << 20),
    ];
    for (budget, min, max) in plan {
        let mut spent = 0u64;
        while spent < budget {
            let size = (min + rng.next_u64() % (max - min + 1))
                .min(budget - spent)
                .max(1);
            let kind = kinds[(n % 3) as usize];
            let sub = dir.join(format!("d{:02}/e{:02}", n % 17, n % 5));
            std::fs::create_dir_all(&sub)?;
            let mut f = std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(sub.join(format!("f{n:06}.{kind:?}").to_lowercase()))?,
            );
            let mut left = size as usize;
            while left > 0 {
                let piece = left.min(8 << 20);
                f.write_all(&generate(kind, piece, &mut rng))?;
                left -= piece;
            }
            f.flush()?;
            spent += size;
            written += size;
            n += 1;
        }
    }
    eprintln!("{n} files, {written} bytes in {}", dir.display());
    Ok(())
}

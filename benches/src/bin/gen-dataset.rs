//! Generates the reproducible benchmark data set.
//!
//! `gen-dataset DIR [GIB] [SEED] [SMALL_MAX_KIB]`: about GIB GiB (default 1) of files — one third
//! random bytes, one third text, one third database-like pages — as many small files
//! (1 KiB to SMALL_MAX_KIB, default 64), medium ones (1–16 MiB) and a few large ones (over
//! 100 MiB) in nested directories. The small files take a tenth of the bytes, so a lower
//! SMALL_MAX_KIB gives more of them (40 gives about 10,000 files for 2 GiB).
//!
//! `gen-dataset --small DIR FILES [MIN_BYTES] [MAX_BYTES] [SEED]`: FILES small JSON-like text
//! files (default 100 to 4096 bytes each, sizes uniform), 1,000 to a directory in two levels,
//! as uploaded documents and exports are: the many-small-files case.

use std::io::Write;
use std::path::PathBuf;

use resilience_benches::{generate, Kind, Xorshift};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--small") {
        return small_files(&args[2..]);
    }
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

/// `--small DIR FILES [MIN_BYTES] [MAX_BYTES] [SEED]`: many small JSON-like files.
fn small_files(args: &[String]) -> std::io::Result<()> {
    let usage = "usage: gen-dataset --small DIR FILES [MIN_BYTES] [MAX_BYTES] [SEED]";
    let dir = PathBuf::from(args.first().expect(usage));
    let number = |i: usize, default: u64| -> u64 {
        args.get(i)
            .map(|s| s.parse().expect(usage))
            .unwrap_or(default)
    };
    let files = number(1, 200_000);
    let (min, max, seed) = (number(2, 100), number(3, 4096), number(4, 42));
    assert!(
        min >= 1 && min <= max,
        "{usage}: 1 <= MIN_BYTES <= MAX_BYTES"
    );
    let mut rng = Xorshift::new(seed);
    let mut written = 0u64;
    for n in 0..files {
        let sub = dir.join(format!("t{:03}/u{:03}", n / 100_000, (n / 1000) % 100));
        if n % 1000 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let size = (min + rng.next_u64() % (max - min + 1)) as usize;
        let id = rng.next_u64();
        let mut doc = format!(
            "{{\"id\":\"{id:016x}\",\"seq\":{n},\"status\":\"{}\",\"body\":\"",
            ["paid", "pending", "queued", "done"][(id % 4) as usize]
        )
        .into_bytes();
        let body = size.saturating_sub(doc.len() + 2);
        doc.extend(generate(Kind::Text, body, &mut rng).into_iter().map(|b| {
            if b == b'\n' {
                b' '
            } else {
                b
            }
        }));
        doc.extend_from_slice(b"\"}");
        doc.truncate(size);
        std::fs::write(sub.join(format!("doc{n:07}.json")), &doc)?;
        written += doc.len() as u64;
    }
    eprintln!("{files} files, {written} bytes in {}", dir.display());
    Ok(())
}

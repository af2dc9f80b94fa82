//! Benchmarks of resilience: `cargo bench -p resilience-benches` runs the criterion benches of
//! each stage and of the whole pipeline; `benches/compare-restic.sh` compares backups and
//! restores with restic side by side; `gen-dataset` makes the reproducible data set they use.

/// A fast, seeded generator (xorshift64*), so data sets are reproducible and cheap to make.
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// What a piece of generated data looks like.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Random bytes: incompressible.
    Random,
    /// Text from a fixed vocabulary: compresses well.
    Text,
    /// 8 KiB database-like pages: headers, repeated tuples, free space of zeros.
    Pages,
}

const WORDS: &[&str] = &[
    "invoice", "customer", "amount", "paid", "pending", "token", "refresh", "job", "queued",
    "running", "done", "failed", "billing", "account", "region", "eu-west", "us-east", "2026",
    "order", "item", "quantity", "price", "total", "tax",
];

/// `len` bytes of the given kind from generator `rng`.
pub fn generate(kind: Kind, len: usize, rng: &mut Xorshift) -> Vec<u8> {
    let mut out = vec![0u8; len];
    match kind {
        Kind::Random => rng.fill(&mut out),
        Kind::Text => {
            let mut i = 0;
            while i < len {
                let r = rng.next_u64();
                let w = WORDS[(r % WORDS.len() as u64) as usize].as_bytes();
                let n = w.len().min(len - i);
                out[i..i + n].copy_from_slice(&w[..n]);
                i += n;
                if i < len {
                    out[i] = if r >> 60 == 0 {
                        b'\n'
                    } else if r >> 58 & 1 == 0 {
                        b','
                    } else {
                        b' '
                    };
                    i += 1;
                }
                if r >> 40 & 0xf == 0 && i + 8 < len {
                    let digits = format!("{:08}", r % 100_000_000);
                    out[i..i + 8].copy_from_slice(digits.as_bytes());
                    i += 8;
                }
            }
        }
        Kind::Pages => {
            for (p, page) in out.chunks_mut(8192).enumerate() {
                let header = (p as u64).to_le_bytes();
                let n = header.len().min(page.len());
                page[..n].copy_from_slice(&header[..n]);
                // Tuples: fixed layout with a few varying fields, filling 40–90% of the page.
                let fill = page.len() * (40 + (rng.next_u64() % 50) as usize) / 100;
                let mut i = 24.min(page.len());
                while i + 64 <= fill {
                    let r = rng.next_u64();
                    page[i..i + 8].copy_from_slice(&r.to_le_bytes());
                    page[i + 8..i + 16].copy_from_slice(&(r % 1000).to_le_bytes());
                    page[i + 16..i + 64]
                        .copy_from_slice(b"status=active;plan=standard;currency=EUR;flag=0;");
                    i += 64;
                }
            }
        }
    }
    out
}

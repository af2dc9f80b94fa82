//! The baseline for `benches/compare-redis.sh`: a plain pipelined DUMP/RESTORE loop, what one
//! writes by hand without a backup tool — SCAN, pipelined DUMP + PTTL, length-prefixed records
//! in one local file; and back with pipelined RESTORE. No compression, encryption,
//! deduplication or catalog.
//!
//! ```sh
//! redis-dump-loop dump redis://127.0.0.1:6379 /tmp/keys.bin
//! redis-dump-loop restore redis://127.0.0.1:6380 /tmp/keys.bin
//! ```

use std::io::{BufReader, BufWriter, Read, Write};

use fred::prelude::*;
use fred::types::Value;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, url, file] = args.as_slice() else {
        return Err("usage: redis-dump-loop dump|restore URL FILE".into());
    };
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    let mut keys_done = 0u64;
    if mode == "dump" {
        let mut out = BufWriter::new(std::fs::File::create(file)?);
        let mut cursor = "0".to_owned();
        loop {
            let page: Value = client.scan_page(cursor, "*", Some(1000), None).await?;
            let Value::Array(mut parts) = page else {
                return Err("bad SCAN reply".into());
            };
            let Some(Value::Array(keys)) = parts.pop() else {
                return Err("bad SCAN reply".into());
            };
            cursor = parts
                .pop()
                .and_then(|c| c.as_string())
                .ok_or("bad cursor")?;
            let pipeline = client.pipeline();
            for k in &keys {
                let k = k.as_bytes().ok_or("bad key")?.to_vec();
                pipeline.dump::<(), _>(k.as_slice()).await?;
                pipeline.pttl::<(), _>(k.as_slice()).await?;
            }
            let replies: Vec<Value> = pipeline.all().await?;
            for (k, pair) in keys.iter().zip(replies.chunks(2)) {
                let (Some(payload), Some(ttl)) = (pair[0].as_bytes(), pair[1].as_i64()) else {
                    continue;
                };
                let k = k.as_bytes().ok_or("bad key")?;
                out.write_all(&(k.len() as u32).to_le_bytes())?;
                out.write_all(k)?;
                out.write_all(&ttl.to_le_bytes())?;
                out.write_all(&(payload.len() as u32).to_le_bytes())?;
                out.write_all(payload)?;
                keys_done += 1;
            }
            if cursor == "0" {
                break;
            }
        }
        out.flush()?;
    } else {
        let mut input = BufReader::new(std::fs::File::open(file)?);
        let mut pipeline = client.pipeline();
        let mut queued = 0;
        loop {
            let mut len = [0u8; 4];
            if input.read_exact(&mut len).is_err() {
                break;
            }
            let mut key = vec![0u8; u32::from_le_bytes(len) as usize];
            input.read_exact(&mut key)?;
            let mut ttl = [0u8; 8];
            input.read_exact(&mut ttl)?;
            input.read_exact(&mut len)?;
            let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
            input.read_exact(&mut payload)?;
            let ttl = i64::from_le_bytes(ttl).max(0);
            pipeline
                .restore::<(), _>(
                    key.as_slice(),
                    ttl,
                    Value::Bytes(payload.into()),
                    true,
                    false,
                    None,
                    None,
                )
                .await?;
            queued += 1;
            keys_done += 1;
            if queued == 1000 {
                let _: Vec<Value> = pipeline.all().await?;
                pipeline = client.pipeline();
                queued = 0;
            }
        }
        let _: Vec<Value> = pipeline.all().await?;
    }
    eprintln!("{keys_done} keys");
    Ok(())
}

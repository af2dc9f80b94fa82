//! A throw-away Garage (S3) of the test's own, started with `scripts/garage.sh`, with keys
//! whose bucket permissions the test chooses (`garage key create`, `garage bucket allow`).
//! A missing `garage` binary fails the test, loudly (`scripts/test` installs it).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Credentials of one Garage key.
#[derive(Clone)]
pub struct S3Key {
    /// `GK…`.
    pub id: String,
    /// The secret.
    pub secret: String,
}

/// A running Garage; stopped on drop.
pub struct Garage {
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The S3 region name.
    pub region: String,
    /// The key `garage.sh` made: read, write and owner of `bucket`.
    pub admin: S3Key,
    /// The bucket `garage.sh` made.
    pub bucket: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

impl Garage {
    /// Starts one in `dir` (which must not exist yet: Garage refuses a stale layout).
    pub fn start(dir: &Path, region: &str) -> Garage {
        Self::start_with(dir, region, None)
    }

    /// Starts one whose admin key is `key` (another server's: two "regions" one client
    /// reaches with the same credentials).
    pub fn start_with_key(dir: &Path, region: &str, key: &S3Key) -> Garage {
        Self::start_with(dir, region, Some(key))
    }

    fn start_with(dir: &Path, region: &str, key: Option<&S3Key>) -> Garage {
        assert!(!dir.exists(), "{} must be fresh", dir.display());
        let mut cmd = Command::new(repo_root().join("scripts/garage.sh"));
        cmd.arg("start").arg(dir).arg(region);
        if let Some(k) = key {
            cmd.env("GARAGE_KEY_ID", &k.id)
                .env("GARAGE_KEY_SECRET", &k.secret);
        }
        let out = cmd.output().expect("scripts/garage.sh runs");
        assert!(
            out.status.success(),
            "cannot start Garage (is `garage` installed? scripts/test installs it): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env: HashMap<String, String> = std::fs::read_to_string(dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Garage {
            dir: dir.to_owned(),
            endpoint: env["AWS_ENDPOINT_URL"].clone(),
            region: env["AWS_REGION"].clone(),
            admin: S3Key {
                id: env["AWS_ACCESS_KEY_ID"].clone(),
                secret: env["AWS_SECRET_ACCESS_KEY"].clone(),
            },
            bucket: env["RESILIENCE_TEST_S3_BUCKET"].clone(),
        }
    }

    /// Runs `garage ARGS` against this server; returns stdout.
    pub fn garage(&self, args: &[&str]) -> String {
        let out = Command::new("garage")
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .args(args)
            .output()
            .expect("garage runs");
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        self.garage(&["bucket", "create", name]);
    }

    /// Creates a key named `name`.
    pub fn key(&self, name: &str) -> S3Key {
        let text = self.garage(&["key", "create", name]);
        let field = |label: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {label} in `garage key create`: {text}"))
        };
        S3Key {
            id: field("Key ID:"),
            secret: field("Secret key:"),
        }
    }

    /// `garage bucket allow FLAGS BUCKET --key KEY` (flags: `--read`, `--write`, `--owner`).
    pub fn allow(&self, bucket: &str, key: &str, flags: &[&str]) {
        let mut args = vec!["bucket", "allow"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[bucket, "--key", key]);
        self.garage(&args);
    }

    /// An `s3://` URL for `bucket/prefix` on this server.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region={}",
            self.endpoint, self.region
        )
    }

    /// Sets a command's S3 environment to `key` on this server (and only that).
    pub fn with_key<'c>(&self, cmd: &'c mut Command, key: &S3Key) -> &'c mut Command {
        cmd.env("AWS_ACCESS_KEY_ID", &key.id)
            .env("AWS_SECRET_ACCESS_KEY", &key.secret)
            .env("AWS_REGION", &self.region)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
    }
}

impl Garage {
    /// Stops it (as a lost region's store).
    pub fn stop(&self) {
        let _ = Command::new(repo_root().join("scripts/garage.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/garage.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

//! Claims: how concurrent pushes of one WAL file name agree which of them may write it, on
//! stores that ignore create-only puts (Garage overwrites silently, so two pushes of different
//! bytes would both "create" the object, both be acknowledged, and the archive keep only the
//! last one).
//!
//! Before writing `wal/<source>/<name>`, a push writes a claim — a sealed note
//! `wal/<source>/claims/<name>/<random id>` holding the BLAKE3 of its bytes — and then lists the
//! claims of that name. A live claim of different bytes makes it back off: it removes its own
//! claim and fails, unacknowledged. Without a rival it looks for the object again — a rival
//! that wrote it and released its claim before the listing is found there — and only then
//! writes. This is the lock protocol of [`resilience_core::repo::lock`]
//! without its settle delay: each push writes its claim *before* it lists, so of two racing
//! pushes at least the later one sees the other's claim — two pushes of different bytes can
//! both back off (Postgres retries), never both write. Pushes of the same bytes never conflict
//! (they write the same object), and claims of other names are never read.
//!
//! A claim lives [`CLAIM_TTL`], judged by the store's clock (the ages of the listed claims
//! against the time the store gave the pusher's own claim), so one left by a killed push stops
//! nothing for long. A push whose own claim is older than half of that (by its own monotonic
//! clock) before it writes gives up, so a stale claim is never acted on: the store client's
//! requests are bounded far below it (`resilience-objstore`'s `config/client.rs`).

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rand::RngCore;
use resilience_core::repo::side::SideObject;
use resilience_core::sink::{ObjectMeta, PutMode};
use serde::{Deserialize, Serialize};

use super::WalArchive;
use crate::error::PgError;

/// How long a claim holds.
pub(super) const CLAIM_TTL: Duration = Duration::from_secs(10 * 60);

/// What a claim says.
#[derive(Serialize, Deserialize)]
struct ClaimNote {
    /// The name claimed.
    name: String,
    /// BLAKE3 of the bytes the claimer pushes, hex.
    blake3: String,
}

/// A push's claim on a name, held until it is released.
pub(super) struct Claim {
    key: String,
    sent: Instant,
}

impl WalArchive {
    fn claims_prefix(&self, name: &str) -> String {
        self.side.key(&format!("claims/{name}/"))
    }

    /// Claims `name` for bytes whose BLAKE3 is `digest`; fails with
    /// [`PgError::WalPushContended`] (after removing its claim) when a live claim of different
    /// bytes is there.
    pub(super) async fn claim(&self, name: &str, digest: &str) -> Result<Claim, PgError> {
        let prefix = self.claims_prefix(name);
        let mut id = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let claim = Claim {
            key: format!("{prefix}{}", hex::encode(id)),
            sent: Instant::now(),
        };
        let note = serde_json::to_vec(&ClaimNote {
            name: name.to_owned(),
            blake3: digest.to_owned(),
        })
        .expect("serializes");
        let sealed = self.side.seal(SideObject::Note, &claim.key, &note);
        if let Err(e) = self
            .sink
            .put(&claim.key, sealed.into(), PutMode::Create)
            .await
        {
            // The put may have been stored though its answer was lost.
            self.release(claim).await;
            return Err(e.into());
        }
        match self.rival(&prefix, &claim, digest).await {
            Ok(None) => Ok(claim),
            Ok(Some(rival)) => {
                self.release(claim).await;
                Err(PgError::WalPushContended {
                    name: name.to_owned(),
                    claim: rival,
                })
            }
            Err(e) => {
                self.release(claim).await;
                Err(e)
            }
        }
    }

    /// A live claim of other bytes than `digest` among the claims under `prefix`, if any.
    async fn rival(
        &self,
        prefix: &str,
        mine: &Claim,
        digest: &str,
    ) -> Result<Option<String>, PgError> {
        let claims: Vec<ObjectMeta> = self.sink.list(prefix).try_collect().await?;
        let my_time = claims
            .iter()
            .find(|m| m.key == mine.key)
            .and_then(|m| m.last_modified);
        let ttl = chrono::Duration::from_std(CLAIM_TTL).expect("fits");
        for other in claims.iter().filter(|m| m.key != mine.key) {
            if let (Some(mine), Some(theirs)) = (my_time, other.last_modified) {
                if mine - theirs > ttl {
                    continue;
                }
            }
            let bytes = match self.sink.get(&other.key).await {
                Ok(bytes) => bytes,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            // A claim that does not open (damaged, or forged without the keys) is counted as
            // a rival: backing off is safe, writing over another push is not.
            let same = self
                .side
                .open(SideObject::Note, &other.key, &bytes)
                .ok()
                .and_then(|payload| serde_json::from_slice::<ClaimNote>(&payload).ok())
                .is_some_and(|note| note.blake3 == digest);
            if !same {
                return Ok(Some(other.key.clone()));
            }
        }
        Ok(None)
    }

    /// Fails if `claim` is too old to be acted on (the push was paused, or the store slow).
    pub(super) fn check_claim(&self, name: &str, claim: &Claim) -> Result<(), PgError> {
        if claim.sent.elapsed() > CLAIM_TTL / 2 {
            return Err(PgError::WalPushContended {
                name: name.to_owned(),
                claim: format!(
                    "{} (our own, which lapsed while the push was held up)",
                    claim.key
                ),
            });
        }
        Ok(())
    }

    /// Removes a claim; one that cannot be removed expires with [`CLAIM_TTL`].
    pub(super) async fn release(&self, claim: Claim) {
        if let Err(e) = self.sink.delete(&claim.key).await {
            tracing::warn!(claim = %claim.key, error = %e, "cannot remove a WAL push claim; it expires");
        }
    }
}

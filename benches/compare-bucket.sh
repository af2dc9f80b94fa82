#!/usr/bin/env bash
# Buckets and replication side by side with rclone, in one run, between two Garage servers on
# loopback (two "regions", same credentials):
#   - bucket backup (Garage A -> local repository) and restore (-> Garage B), next to
#     `rclone copy` of the same objects from A to B;
#   - replication of the repository (kept on A) to B, next to `rclone sync` of it.
#
#   benches/compare-bucket.sh             # about 2 GiB (DATASET_GIB=0.5 for a quick run)
#
# The data set is gen-dataset's mix (small, medium and large files; random, text and pages),
# with small files of 1-40 KiB so that 2 GiB comes to about 10,000 objects (SMALL_MAX_KIB).
set -euo pipefail
# rclone refuses a custom CA bundle for plain-http loopback endpoints.
unset AWS_CA_BUNDLE

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GIB="${DATASET_GIB:-2}"
WORK="$(mktemp -d)"
cleanup() {
  "$ROOT/scripts/garage.sh" stop "$WORK/ga" || true
  "$ROOT/scripts/garage.sh" stop "$WORK/gb" || true
  rm -rf "$WORK" || true
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need rclone rclone
need /usr/bin/time time

cargo build --release --locked -p resilience-cli -p resilience-benches --manifest-path "$ROOT/Cargo.toml" >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
RES="$TARGET/release/resilience"
"$TARGET/release/gen-dataset" "$WORK/data" "$GIB" 7 "${SMALL_MAX_KIB:-40}" >&2
OBJECTS=$(find "$WORK/data" -type f | wc -l)
BYTES=$(du -sb --apparent-size "$WORK/data" | cut -f1)

"$ROOT/scripts/garage.sh" start "$WORK/ga" garage >&2
# shellcheck disable=SC1091
. "$WORK/ga/env"
GARAGE_KEY_ID="$AWS_ACCESS_KEY_ID" GARAGE_KEY_SECRET="$AWS_SECRET_ACCESS_KEY" \
  "$ROOT/scripts/garage.sh" start "$WORK/gb" dc-b >&2
A="$AWS_ENDPOINT_URL"
B="$(. "$WORK/gb/env" && echo "$AWS_ENDPOINT_URL")"
BUCKET="$RESILIENCE_TEST_S3_BUCKET"
for r in ga gb; do
  ep="$A"; region=garage
  [ "$r" = gb ] && { ep="$B"; region=dc-b; }
  upper=$(echo "$r" | tr a-z A-Z)
  export "RCLONE_CONFIG_${upper}_TYPE=s3" "RCLONE_CONFIG_${upper}_PROVIDER=Other" \
    "RCLONE_CONFIG_${upper}_ENDPOINT=$ep" "RCLONE_CONFIG_${upper}_REGION=$region" \
    "RCLONE_CONFIG_${upper}_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" \
    "RCLONE_CONFIG_${upper}_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" \
    "RCLONE_CONFIG_${upper}_FORCE_PATH_STYLE=true"
done
echo "uploading $OBJECTS objects ($BYTES bytes) to Garage A" >&2
rclone copy --transfers 8 "$WORK/data" "ga:$BUCKET/src"

run() {
  local label="$1"; shift
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/$label.time" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
    cat "$WORK/$label.err" >&2; echo "$label failed" >&2; exit 1; }
}
secs() { cut -d' ' -f1 "$WORK/$1.time"; }
rss() { echo $(( $(cut -d' ' -f2 "$WORK/$1.time") / 1024 )); }
mbps() { python3 -c "print(f'{$BYTES/1e6/$(secs "$1"):.0f}')"; }

"$RES" init --repo "$WORK/repo" --key-file "$WORK/key" >/dev/null 2>&1
L=(--repo "$WORK/repo" --key-file "$WORK/key")
run res-backup "$RES" "${L[@]}" --json bucket backup "s3://$BUCKET/src"
run res-backup2 "$RES" "${L[@]}" --json bucket backup "s3://$BUCKET/src"
run res-restore "$RES" "${L[@]}" --json bucket restore latest "s3://$BUCKET/res-dst?endpoint=$B&region=dc-b"
run rclone-copy rclone copy --transfers 8 "ga:$BUCKET/src" "gb:$BUCKET/rclone-dst"
run rclone-check rclone check "ga:$BUCKET/src" "gb:$BUCKET/res-dst"

# Replication: a repository on A, replicated to B; rclone sync of the same repository.
"$RES" init --repo "s3://$BUCKET/repo" --key-file "$WORK/key2" >/dev/null 2>&1
"$RES" --repo "s3://$BUCKET/repo" --key-file "$WORK/key2" backup dir "$WORK/data" >/dev/null 2>&1
REPO_BYTES=$(rclone size --json "ga:$BUCKET/repo" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
# Five rounds, alternating, each into a fresh prefix of B; the medians are reported (a few
# seconds each, so one run is at the mercy of the machine's noise), and every round's time.
ROUNDS="1 2 3 4 5"
for i in $ROUNDS; do
  run "res-replicate-$i" "$RES" --repo "s3://$BUCKET/repo" --json replicate --to "s3://$BUCKET/repo-$i?endpoint=$B&region=dc-b"
  run "rclone-sync-$i" rclone sync --transfers 8 --checksum "ga:$BUCKET/repo" "gb:$BUCKET/repo-rclone-$i"
done
median() { # median LABEL FIELD: the middle of the rounds' FIELD (1 seconds, 2 RSS KiB, cpu: user + system)
  for i in $ROUNDS; do
    case "$2" in
      cpu) awk '{print $3 + $4}' "$WORK/$1-$i.time" ;;
      *) cut -d' ' -f"$2" "$WORK/$1-$i.time" ;;
    esac
  done | sort -g | sed -n 3p
}
rounds() { for i in $ROUNDS; do cut -d' ' -f1 "$WORK/$1-$i.time"; done | paste -sd' '; }
for label in res-replicate rclone-sync; do
  echo "$(median $label 1) $(median $label 2) $(median $label cpu)" > "$WORK/$label.time"
  rounds "$label" > "$WORK/$label.rounds"
done
READ_BACK=$(python3 -c "import json; print(json.load(open('$WORK/res-replicate-1.out'))['read_back_objects'])")
rmbps() { python3 -c "print(f'{$REPO_BYTES/1e6/$(secs "$1"):.0f}')"; }

OUT="$ROOT/benches/results/bucket-compare-$(date +%Y%m%d-%H%M).md"
{
  echo "# Buckets and replication vs rclone ($OBJECTS objects, $((BYTES / 1000000)) MB; repository $((REPO_BYTES / 1000000)) MB; $(nproc) cores; $(rclone version | head -1))"
  echo
  echo "| step | seconds | MB/s | peak RSS MiB |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| resilience bucket backup (A -> repository) | $(secs res-backup) | $(mbps res-backup) | $(rss res-backup) |"
  echo "| resilience bucket backup, unchanged | $(secs res-backup2) | $(mbps res-backup2) | $(rss res-backup2) |"
  echo "| resilience bucket restore (repository -> B) | $(secs res-restore) | $(mbps res-restore) | $(rss res-restore) |"
  echo "| rclone copy A -> B | $(secs rclone-copy) | $(mbps rclone-copy) | $(rss rclone-copy) |"
  echo "| resilience replicate (repository A -> B, median of 5; streamed, checksums checked, copies proven by ETag) | $(secs res-replicate) | $(rmbps res-replicate) | $(rss res-replicate) |"
  echo "| rclone sync --checksum (repository A -> B, median of 5) | $(secs rclone-sync) | $(rmbps rclone-sync) | $(rss rclone-sync) |"
  echo
  echo "Ratios (rclone time / resilience time): backup $(python3 -c "print(f'{$(secs rclone-copy)/$(secs res-backup):.2f}')"), restore $(python3 -c "print(f'{$(secs rclone-copy)/$(secs res-restore):.2f}')"), replication $(python3 -c "print(f'{$(secs rclone-sync)/$(secs res-replicate):.2f}')")."
  echo "The restored bucket was checked object by object against the source with \`rclone check\`."
  echo "Replication CPU (user + system, median): resilience $(cut -d' ' -f3 "$WORK/res-replicate.time") s, rclone $(cut -d' ' -f3 "$WORK/rclone-sync.time") s; copies read back to prove them: $READ_BACK."
  echo "Replication rounds (seconds, in order, alternating): resilience $(cat "$WORK/res-replicate.rounds"); rclone $(cat "$WORK/rclone-sync.rounds")."
} | tee "$OUT"

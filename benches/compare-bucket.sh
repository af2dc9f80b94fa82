#!/usr/bin/env bash
# Buckets and replication side by side with rclone, in one run, between two Garage servers on
# loopback (two "regions", same credentials):
#   - bucket backup (Garage A -> local repository) and restore (-> Garage B), next to
#     `rclone copy` of the same objects from A to B, over ROUNDS rounds;
#   - replication of a repository (kept on A) to B, next to `rclone sync --checksum` of it,
#     over REPL_ROUNDS rounds (default 5: a few seconds each).
#
#   benches/compare-bucket.sh                       # about 2 GiB, 3 rounds
#   DATASET_GIB=0.5 ROUNDS=3 REPL_ROUNDS=5 MEMORY=64MiB benches/compare-bucket.sh
#   RESILIENCE_BIN=/path/to/resilience BENCH_BIN_DIR=/dir/with/gen-dataset benches/compare-bucket.sh
#
# The data set is gen-dataset's mix (small, medium and large files; random, text and pages),
# with small files of 1-40 KiB so that 2 GiB comes to about 10,000 objects (SMALL_MAX_KIB).
# Needs `garage` on the PATH (scripts/garage.sh starts it). Honest on a shared VM: memory touched
# first, `sync` before every timed step, every round backs up into a fresh repository and copies
# into fresh prefixes of B (removed after the round), the tools alternating which goes first;
# every restore is checked object by object (`rclone check`, untimed). Medians and [min–max],
# peak RSS and the load go to benches/results/bucket-compare-<time>.md with the command.
set -euo pipefail
# rclone refuses a custom CA bundle for plain-http loopback endpoints.
unset AWS_CA_BUNDLE

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GIB="${DATASET_GIB:-2}"
SMALL="${SMALL_MAX_KIB:-40}"
ROUNDS="${ROUNDS:-3}"
REPL_ROUNDS="${REPL_ROUNDS:-5}"
MEMORY="${MEMORY:-64MiB}"
WORK="$(mktemp -d)"
cleanup() {
  "$ROOT/scripts/garage.sh" stop "$WORK/ga" || true
  "$ROOT/scripts/garage.sh" stop "$WORK/gb" || true
  rm -rf "$WORK" || true
}
trap cleanup EXIT
# shellcheck source=lib/bench.sh
. "$ROOT/benches/lib/bench.sh"

need rclone rclone
need /usr/bin/time time
command -v garage >/dev/null || { echo "needs garage (cargo install garage --locked)" >&2; exit 1; }

RES=$(resilience_bin)
GEN=$(bench_bin gen-dataset)
"$GEN" "$WORK/data" "$GIB" 7 "$SMALL" >&2
OBJECTS=$(find "$WORK/data" -type f | wc -l)
BYTES=$(du -sb --apparent-size "$WORK/data" | cut -f1)

"$ROOT/scripts/garage.sh" start "$WORK/ga" garage >&2
# shellcheck disable=SC1091
. "$WORK/ga/env"
GARAGE_KEY_ID="$AWS_ACCESS_KEY_ID" GARAGE_KEY_SECRET="$AWS_SECRET_ACCESS_KEY" \
  "$ROOT/scripts/garage.sh" start "$WORK/gb" dc-b >&2
A="$AWS_ENDPOINT_URL"
# shellcheck disable=SC1091
B="$(. "$WORK/gb/env" && echo "$AWS_ENDPOINT_URL")"
BUCKET="$RESILIENCE_TEST_S3_BUCKET"
: > "$WORK/rclone.conf"   # the remotes come from the environment
export RCLONE_CONFIG="$WORK/rclone.conf"
for r in ga gb; do
  ep="$A"; region=garage
  [ "$r" = gb ] && { ep="$B"; region=dc-b; }
  upper=$(echo "$r" | tr '[:lower:]' '[:upper:]')
  export "RCLONE_CONFIG_${upper}_TYPE=s3" "RCLONE_CONFIG_${upper}_PROVIDER=Other" \
    "RCLONE_CONFIG_${upper}_ENDPOINT=$ep" "RCLONE_CONFIG_${upper}_REGION=$region" \
    "RCLONE_CONFIG_${upper}_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" \
    "RCLONE_CONFIG_${upper}_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" \
    "RCLONE_CONFIG_${upper}_FORCE_PATH_STYLE=true"
done
echo "uploading $OBJECTS objects ($BYTES bytes) to Garage A" >&2
rclone copy --transfers 8 "$WORK/data" "ga:$BUCKET/src"

# The repository to replicate: on A, a backup of the data set.
"$RES" init --repo "s3://$BUCKET/repo" --key-file "$WORK/key2" >/dev/null 2>&1
"$RES" --repo "s3://$BUCKET/repo" --key-file "$WORK/key2" --memory "$MEMORY" backup dir "$WORK/data" >/dev/null 2>&1
REPO_BYTES=$(rclone size --json "ga:$BUCKET/repo" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')

touch_memory
bench_init "$WORK"
L=(--repo "$WORK/repo" --key-file "$WORK/key" --memory "$MEMORY")

res_round() {
  local r="$1"
  rm -rf "$WORK/repo" "$WORK/key"
  "$RES" init "${L[@]}" >/dev/null 2>&1
  step resilience backup "$r" "$RES" "${L[@]}" --json bucket backup "s3://$BUCKET/src"
  step resilience unchanged "$r" "$RES" "${L[@]}" --json bucket backup "s3://$BUCKET/src"
  step resilience restore "$r" "$RES" "${L[@]}" --json bucket restore latest "s3://$BUCKET/res-dst-$r?endpoint=$B&region=dc-b"
  rclone check -q "ga:$BUCKET/src" "gb:$BUCKET/res-dst-$r" || { echo "resilience's restore differs" >&2; exit 1; }
  rclone purge "gb:$BUCKET/res-dst-$r"
}

rclone_round() {
  local r="$1"
  step rclone copy "$r" rclone copy --transfers 8 "ga:$BUCKET/src" "gb:$BUCKET/rclone-dst-$r"
  rclone check -q "ga:$BUCKET/src" "gb:$BUCKET/rclone-dst-$r" || { echo "rclone's copy differs" >&2; exit 1; }
  rclone purge "gb:$BUCKET/rclone-dst-$r"
}

res_replicate() {
  step resilience replicate "$1" "$RES" --repo "s3://$BUCKET/repo" --json replicate --to "s3://$BUCKET/repo-$1?endpoint=$B&region=dc-b"
  rclone purge "gb:$BUCKET/repo-$1"
}

rclone_sync() {
  step rclone sync "$1" rclone sync --transfers 8 --checksum "ga:$BUCKET/repo" "gb:$BUCKET/repo-rclone-$1"
  rclone purge "gb:$BUCKET/repo-rclone-$1"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "bucket round $r of $ROUNDS" >&2
  if [ $((r % 2)) -eq 1 ]; then res_round "$r"; rclone_round "$r"; else rclone_round "$r"; res_round "$r"; fi
done
for r in $(seq 1 "$REPL_ROUNDS"); do
  echo "replication round $r of $REPL_ROUNDS" >&2
  if [ $((r % 2)) -eq 1 ]; then res_replicate "$r"; rclone_sync "$r"; else rclone_sync "$r"; res_replicate "$r"; fi
done

mbps() {  # mbps BYTES TOOL STEP: median MB/s
  python3 - "$BENCH_LIB" "$BENCH_TSV" "$@" <<'PY'
import statistics, sys
sys.path.insert(0, sys.argv[1])
import bench_report as br
n = int(sys.argv[3])
print(f"{statistics.median([n / 1e6 / x[0] for x in br.of(br.load(sys.argv[2]), sys.argv[4], sys.argv[5])]):.0f}")
PY
}
OUT=$(results_file bucket-compare)
{
  echo "# Buckets and replication vs rclone ($OBJECTS objects, $((BYTES / 1000000)) MB; repository $((REPO_BYTES / 1000000)) MB; $("$RES" --version); $(rclone version | head -1))"
  echo
  echo "Bucket backup (Garage A -> local repository) and restore (repository -> Garage B), each next to"
  echo "\`rclone copy --transfers 8\` A -> B; replication of a repository on A to B (streamed, checksums"
  echo "checked, copies proven by ETag) next to \`rclone sync --transfers 8 --checksum\`. Every restore and"
  echo "copy was checked object by object with \`rclone check\` (untimed)."
  echo
  report_table rclone resilience "bucket backup (A -> repository) vs rclone copy=copy:backup" \
    "bucket backup, unchanged=-:unchanged" "bucket restore (repository -> B) vs rclone copy=copy:restore" \
    "replicate (repository A -> B) vs rclone sync=sync:replicate"
  echo
  echo "Throughput (median MB/s): resilience backup $(mbps "$BYTES" resilience backup), restore" \
       "$(mbps "$BYTES" resilience restore), rclone copy $(mbps "$BYTES" rclone copy); replication of the" \
       "repository: resilience $(mbps "$REPO_BYTES" resilience replicate), rclone sync $(mbps "$REPO_BYTES" rclone sync)."
  echo "Replication over $REPL_ROUNDS rounds, the bucket steps over $ROUNDS."
  echo
  report_footer "DATASET_GIB=$GIB" "SMALL_MAX_KIB=$SMALL" ROUNDS REPL_ROUNDS MEMORY
} | tee "$OUT"

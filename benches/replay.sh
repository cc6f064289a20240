#!/usr/bin/env bash
# The replay benchmarks in one table: P1, P2 and P3 replayed by `tern replay --stats` over the
# same workload file (JSON decoding included), in memory on one engine thread, sharded over
# two engine threads (`--workers 2`, plus the thread that reads), and with durable state, beside
# the hand-written P1 loop (benches/p1_baseline.rs) that bounds what P1 can cost.
#
#   benches/replay.sh [EVENTS] [KEYS]       (defaults: 5000000 events, 10000 keys)
#
# The workload is generated once per size into /tmp (tern simulate, seed 7). Scaling needs
# both cores free: check `uptime` first.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-5000000}
keys=${2:-10000}
file=/tmp/tern-w${events}-k${keys}.jsonl

cargo build --release --locked --quiet
cargo build --release --locked --quiet --bench p1_baseline
tern=./target/release/tern
baseline=$(ls -t target/release/deps/p1_baseline-* | grep -v '\.d$' | head -1)

if [ ! -s "$file" ]; then
  "$tern" simulate --out "$file" --keys "$keys" --events "$events" --seed 7 >&2
fi

# Prints "events/s alerts peak_partial_matches" of one replay.
replay() {
  "$tern" replay --rules benches/workload.tern "benches/$1.tern" --input "$file" --stats "${@:2}" \
    2>&1 >/dev/null | awk '
      $1 == "events/s" { rate = $2 }
      $1 == "alerts" { alerts = $2 }
      $1 == "peak" && $2 == "partial" { peak = $3 }
      END { print rate, alerts, peak }'
}

printf '%s events, %s keys; in memory and durable: one engine thread\n\n' "$events" "$keys"
printf '| | events/s in memory | --workers 2 | 2 workers / 1 | events/s durable (--state) | alerts | peak partial matches |\n'
printf '|---|---|---|---|---|---|---|\n'
p1_rate=0
for p in p1 p2 p3; do
  read -r rate alerts peak < <(replay "$p")
  read -r rate2 alerts2 _ < <(replay "$p" --workers 2)
  if [ "$alerts2" != "$alerts" ]; then
    echo "error: $p: $alerts alerts with one worker, $alerts2 with two" >&2
    exit 1
  fi
  state=$(mktemp -d)
  read -r durable _ _ < <(replay "$p" --state "$state")
  rm -rf "$state"
  [ "$p" = p1 ] && p1_rate=$rate
  ratio=$(awk -v a="$rate2" -v b="$rate" 'BEGIN { printf "%.2fx", a / b }')
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${p^^}" "$rate" "$rate2" "$ratio" "$durable" "$alerts" "$peak"
done
read -r base_rate base_matches < <("$baseline" --bench "$file" | awk '
  $1 == "events/s" { rate = $2 } $1 == "matches" { m = $2 } END { print rate, m }')
printf '| P1 hand-written loop | %s | | | | %s | |\n' "$base_rate" "$base_matches"
awk -v a="$p1_rate" -v b="$base_rate" 'BEGIN { printf "\nP1: tern / hand-written loop = %.2f\n", a / b }'

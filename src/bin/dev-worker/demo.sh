#!/usr/bin/env bash
# `make demo`: two development workers on loopback and a coordinator in front of them.
# The development worker runs jobs WITHOUT a sandbox: for trying trusted-pool locally only.
set -euo pipefail
port="${1:-9000}"
cd "$(dirname "$0")/../../.."
bin=${CARGO_TARGET_DIR:-target}/debug
demo=demo
mkdir -p "$demo"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

entries=()
for n in 1 2; do
    wport=$((port + 100 + n))
    "$bin/dev-worker" --port "$wport" --key "$demo/worker$n.pem" >"$demo/worker$n.out" 2>"$demo/worker$n.log" &
    pids+=($!)
    for _ in $(seq 100); do
        grep -q "Listening on" "$demo/worker$n.out" 2>/dev/null && break
        sleep 0.1
    done
    id=$(sed -n 's/^Worker ID: //p' "$demo/worker$n.out")
    [ -n "$id" ] || { echo "worker $n did not start; see $demo/worker$n.log" >&2; exit 1; }
    entries+=("{\"worker_id\": \"$id\", \"endpoint\": \"http://127.0.0.1:$wport\", \"max_concurrent_jobs\": 2}")
done
(IFS=,; echo "[${entries[*]}]") >"$demo/workers.json"

mkdir -p "$demo/job"
printf 'print("hello from a trusted-pool worker")\nopen("result.txt", "w").write("42\\n")\n' >"$demo/job/main.py"
cat <<MSG

Demo pool: 2 development workers (NO sandbox, loopback only) behind a coordinator on port $port.
Try, in another terminal:

  curl -s localhost:$port/pool
  curl -s -F files=@$demo/job/main.py -F 'manifest={"entrypoint":"main.py","outputs":["result.txt"]}' localhost:$port/submit
  curl -s localhost:$port/status/<job_id>
  curl -s localhost:$port/logs/<job_id>
  curl -s localhost:$port/outputs/<job_id>
  curl -s localhost:$port/outputs/<job_id>/result.txt

Ctrl-C stops everything.

MSG
"$bin/trusted-pool" --port "$port" --bind 127.0.0.1 --workers "$demo/workers.json" \
    --state-dir "$demo/state" --health-interval 5 --track-interval 0.5 &
pids+=($!)
wait "${pids[-1]}"

#!/usr/bin/env bash
# The cutover demo: build cutover and the hello app, deploy hello v1 (blue), then v2
# (green) while a client keeps requesting through the managed nginx on
# 127.0.0.1:8080, and show the switch. Needs Rust (rustup), Docker and nginx (this
# script installs nginx from Debian's packages and the wasm32-wasip2 target if they
# are missing). Everything listens on 127.0.0.1 only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "== installing nginx (Debian package)"
  as_root apt-get update -qq && as_root apt-get install -y -qq nginx
fi
export PATH="$PATH:/usr/sbin"
rustup target add wasm32-wasip2 >/dev/null

echo "== building cutover (release) and the hello app (static, FROM scratch)"
cargo build --release --locked -p cutover --manifest-path "$root/Cargo.toml"
cutover="$root/target/release/cutover"
"$here/build.sh"

cd "$here"
echo "== deploy v1: nothing is live yet, so it goes to blue"
"$cutover" deploy --build-arg VERSION=v1
curl -s http://127.0.0.1:8080/

echo "== deploy v2 while a client requests every 50 ms"
watch_log="$(mktemp)"
( for _ in $(seq 1 400); do
    curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8080/ >>"$watch_log"
    curl -s http://127.0.0.1:8080/ >>"$watch_log" || echo "request failed" >>"$watch_log"
    sleep 0.05
  done ) &
watcher=$!
"$cutover" deploy --build-arg VERSION=v2
sleep 1
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
echo "== what the client saw (count, status, body):"
uniq -c "$watch_log"
rm -f "$watch_log"

echo "== status"
"$cutover" status || true
echo
echo "hello is live on http://127.0.0.1:8080/ — try: $cutover --config $here/cutover.toml rollback"
echo "take it all down:                          $cutover --config $here/cutover.toml down --images"

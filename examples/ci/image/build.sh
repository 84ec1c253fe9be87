#!/usr/bin/env bash
# Builds cutover as a static x86_64-unknown-linux-musl binary and an image of it
# FROM scratch (./Dockerfile), tagged `cutover:<version>` and `cutover:latest`.
#
#   examples/ci/image/build.sh            # release build (the one to publish)
#   PROFILE=dev examples/ci/image/build.sh   # quicker, for a smoke test
#
# Needs: rustup's x86_64-unknown-linux-musl and wasm32-wasip2 targets, musl-gcc
# (Debian: musl-tools, for ring's C parts) and a Docker engine. The binary is left in
# $CARGO_TARGET_DIR (default target/musl)/x86_64-unknown-linux-musl/<profile>/cutover.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
triple=x86_64-unknown-linux-musl
profile="${PROFILE:-release}"
# Its own target directory: a different target triple shares nothing with the
# workspace's build anyway, and this keeps `cargo test` from waiting on its lock.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/musl}"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS

cargo build --locked --profile "$profile" -p cutover --target "$triple" \
    --manifest-path "$root/Cargo.toml"

dir="$profile"
[ "$profile" = dev ] && dir=debug
bin="$CARGO_TARGET_DIR/$triple/$dir/cutover"
if readelf -l "$bin" | grep -q INTERP; then
    echo "build.sh: $bin is dynamically linked; it would not start FROM scratch" >&2
    exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$here/Dockerfile" "$bin" "$context/"
cp /etc/ssl/certs/ca-certificates.crt "$context/"
version="$("$bin" --version | awk '{print $2}')"
docker build --quiet -t "cutover:$version" -t cutover:latest "$context" >/dev/null
echo "build.sh: $bin ($(du -h "$bin" | cut -f1)), image cutover:$version ($(docker image inspect -f '{{.Size}}' cutover:latest) bytes)"

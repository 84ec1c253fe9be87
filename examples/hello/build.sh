#!/usr/bin/env bash
# Builds the hello app as a static binary and copies it into the image context
# (examples/hello/image/), ready for `docker build` or a cutover deploy.
#
# It uses its own target directory so the static flags never invalidate the normal
# workspace build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
triple=x86_64-unknown-linux-gnu
target_dir="$root/target/hello-static"

# RUSTFLAGS would override the per-target flags below and yield a dynamic binary,
# which cannot run in a FROM scratch image.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"

cargo build --release -p hello --target "$triple" --target-dir "$target_dir" \
    --manifest-path "$root/Cargo.toml"

bin="$target_dir/$triple/release/hello"
if command -v readelf >/dev/null && readelf -l "$bin" | grep -q INTERP; then
    echo "build.sh: $bin is dynamically linked; it would not start FROM scratch" >&2
    exit 1
fi
cp "$bin" "$here/image/hello"
echo "build.sh: static binary copied to $here/image/hello"

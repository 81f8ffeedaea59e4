#!/usr/bin/env bash
# make dist: static musl binaries for x86_64 and aarch64, each in a tarball with README.md,
# workers.json.example, the systemd unit and the alerting rules, plus SHA256SUMS, under
# target/dist/.
# The C inside (ring, SQLite) is compiled by zig through cargo-zigbuild (both from PyPI), so
# no musl cross gcc is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
max_bytes=$((6 * 1024 * 1024))
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
out=target/dist
# Where cargo builds (a CARGO_TARGET_DIR elsewhere too); the tarballs stay in target/dist.
built=${CARGO_TARGET_DIR:-target}
# SQLite without the optional extensions the job store never uses (as the Makefile builds it).
export LIBSQLITE3_FLAGS="${LIBSQLITE3_FLAGS:-$(cat deploy/sqlite-flags)}"
# The C inside (SQLite, ring) without unwind tables (as the Makefile's static build): no Rust
# code runs beneath a C frame, so no panic unwinds through one: 85 KiB less binary.
export CFLAGS_x86_64_unknown_linux_musl="${CFLAGS_x86_64_unknown_linux_musl:-$(cat deploy/musl-cflags)}"
export CFLAGS_aarch64_unknown_linux_musl="${CFLAGS_aarch64_unknown_linux_musl:-$(cat deploy/musl-cflags)}"

# Exit status 3: the cross toolchain cannot be installed here (the caller may skip the release).
no_toolchain() {
    echo "make dist: $1" >&2
    exit 3
}
rustup target add "${targets[@]}" >/dev/null || no_toolchain "rustup cannot add ${targets[*]}"
if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -c 'import ziglang' >/dev/null 2>&1; then
    python3 -m pip install --quiet ziglang cargo-zigbuild 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages ziglang cargo-zigbuild \
        || no_toolchain "cannot install ziglang and cargo-zigbuild from PyPI"
fi
command -v cargo-zigbuild >/dev/null 2>&1 || export PATH="$HOME/.local/bin:$PATH"
command -v cargo-zigbuild >/dev/null 2>&1 || no_toolchain "cargo-zigbuild is not on PATH"

rm -rf "$out"
mkdir -p "$out"
for target in "${targets[@]}"; do
    started=$(date +%s)
    cargo zigbuild --release --locked --target "$target" --bin trusted-pool
    echo "built $target in $(( $(date +%s) - started )) s"
    arch=${target%%-*}
    name="trusted-pool-$version-$arch-linux-musl"
    mkdir -p "$out/$name"
    cp "$built/$target/release/trusted-pool" "$out/$name/trusted-pool"
    cp README.md workers.json.example deploy/trusted-pool.service deploy/alerts.yml "$out/$name/"
    size=$(stat -c %s "$out/$name/trusted-pool")
    if [ "$size" -gt "$max_bytes" ]; then
        echo "$name/trusted-pool is $size bytes, over the 6 MiB budget" >&2
        exit 1
    fi
    tar -C "$out" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
done
(cd "$out" && sha256sum ./*.tar.gz ./*/trusted-pool | sed 's# \./# #' > SHA256SUMS)
echo
echo "target/dist:"
(cd "$out" && ls -l ./*.tar.gz ./*/trusted-pool SHA256SUMS | awk '{ printf "  %10d  %s\n", $5, $9 }')
(cd "$out" && file ./*/trusted-pool 2>/dev/null | sed 's/^/  /') || true

#!/usr/bin/env bash
# `cargo check --target aarch64-unknown-linux-gnu`: the library, binary and
# tests compile for 64-bit ARM (Apple silicon under Linux, ARM servers),
# where gemm's products use NEON and the owned loops their portable form.
#
# rustup cannot download the aarch64 standard library here (no network but
# the package registries), so the compiler comes from Debian instead:
# `rustc-web` (a recent rustc for bookworm) with its amd64 and arm64
# standard libraries and its LLVM, and GCC's aarch64 cross compiler (ring's
# build script compiles C for the target), fetched with `apt-get download`
# (the arm64 ones through a private apt state, so the system's own
# architectures and packages are not touched) and unpacked under
# ~/.cache/schnell-aarch64 (about 0.9 GB). Its own build folder
# (~/.cache/schnell-aarch64-target) is kept between runs. Nothing is
# installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="1.96.0+dfsg1-1~deb12u2"
HOME_DIR="${SCHNELL_AARCH64_HOME:-$HOME/.cache/schnell-aarch64}"
ROOT="$HOME_DIR/root"
RUSTC="$ROOT/usr/bin/rustc"
export LD_LIBRARY_PATH="$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

CC="$ROOT/usr/bin/aarch64-linux-gnu-gcc-12"
if ! "$RUSTC" --print target-libdir --target aarch64-unknown-linux-gnu >/dev/null 2>&1 ||
    ! [ -d "$ROOT/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib" ] || ! "$CC" --version >/dev/null 2>&1; then
    echo "fetching Debian's rustc-web $VERSION with the aarch64 standard library into $HOME_DIR"
    rm -rf "$HOME_DIR"
    mkdir -p "$HOME_DIR/debs" "$HOME_DIR/apt/state/lists/partial" "$HOME_DIR/apt/cache/archives/partial"
    (
        cd "$HOME_DIR/debs"
        apt-get -q download "rustc-web=$VERSION" "libstd-rust-web-1.96=$VERSION" "libstd-rust-web-dev=$VERSION" libllvm22 \
            gcc-12-aarch64-linux-gnu cpp-12-aarch64-linux-gnu gcc-12-aarch64-linux-gnu-base binutils-aarch64-linux-gnu \
            libgcc-12-dev-arm64-cross libc6-dev-arm64-cross libc6-arm64-cross linux-libc-dev-arm64-cross \
            libgcc-s1-arm64-cross libasan8-arm64-cross libatomic1-arm64-cross libgomp1-arm64-cross \
            libhwasan0-arm64-cross libitm1-arm64-cross liblsan0-arm64-cross libtsan2-arm64-cross libubsan1-arm64-cross
        arm64=(-o "Dir::State=$HOME_DIR/apt/state" -o "Dir::Cache=$HOME_DIR/apt/cache"
            -o Dir::State::status=/dev/null -o APT::Architecture=arm64 -o APT::Architectures::=arm64)
        apt-get -q "${arm64[@]}" update
        apt-get -q "${arm64[@]}" download "libstd-rust-web-1.96:arm64=$VERSION" "libstd-rust-web-dev:arm64=$VERSION"
    )
    for deb in "$HOME_DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
fi
"$RUSTC" --version

# cargo's own version (rustup's) drives Debian's rustc; the lock file holds.
RUSTC="$RUSTC" CC_aarch64_unknown_linux_gnu="$CC" AR_aarch64_unknown_linux_gnu="$ROOT/usr/bin/aarch64-linux-gnu-ar" \
    CARGO_TARGET_DIR="${SCHNELL_AARCH64_TARGET:-$HOME/.cache/schnell-aarch64-target}" \
    cargo check --locked --target aarch64-unknown-linux-gnu --lib --bins --tests

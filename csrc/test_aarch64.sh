#!/usr/bin/env bash
# Cross-compiles the Hamming library with its C test driver for aarch64 and runs it
# under qemu-aarch64: NEON must give exactly the serial kernel's (and a bit-by-bit
# reference's) results. This is how we know the Raspberry Pi / Jetson path is exact.
# Emulated timings mean nothing; only correctness is checked. Run by `make test`.
set -euo pipefail
cd "$(dirname "$0")"

CC=${AARCH64_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU_AARCH64:-qemu-aarch64}
missing=()
command -v "$CC" >/dev/null 2>&1 || missing+=("$CC (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
command -v "$QEMU" >/dev/null 2>&1 || missing+=("$QEMU (Debian: qemu-user)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "test_aarch64.sh: FAILED: missing ${missing[*]}." >&2
    echo "Install them with 'make system-deps' or" >&2
    echo "  sudo apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user" >&2
    exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$CC" -O3 -std=gnu11 -Wall -Wextra -Werror -static -pthread \
    -o "$out/test_driver" test_driver.c hamming.c
echo "test_aarch64.sh: running the NEON vs serial driver under $QEMU"
"$QEMU" "$out/test_driver" --require neon

#!/usr/bin/env bash
# Builds the Hamming library with its C test driver under AddressSanitizer and
# UndefinedBehaviorSanitizer and runs it natively: every kernel this CPU has (serial,
# AVX2, AVX-512 or NEON) against the serial one and a bit-by-bit reference, with any
# out-of-bounds access, leak or undefined behaviour failing the run. Run by `make test`.
set -euo pipefail
cd "$(dirname "$0")"

CC=${CC:-gcc}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$CC" -O1 -g -std=gnu11 -Wall -Wextra -Werror -pthread \
    -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
    -o "$out/test_driver" test_driver.c hamming.c
echo "test_sanitizers.sh: running the C test driver under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$out/test_driver"

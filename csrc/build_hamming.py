"""cffi (API, out-of-line) build of the C Hamming kernels as ``cvahash.kernel._hamming_cffi``.

setup.py names this file in ``cffi_modules``; the editable install then compiles
csrc/hamming.c (every ISA in one translation unit, chosen at run time) into
runtime/kernel/, where ``import cvahash.kernel._hamming_cffi`` finds it. Run directly
(``python csrc/build_hamming.py``) to build into the current directory.
"""

import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
#define CVH_MAX_NBYTES ...
#define CVH_ISA_SERIAL ...
#define CVH_ISA_AVX2 ...
#define CVH_ISA_AVX512 ...
#define CVH_ISA_NEON ...
#define CVH_ISA_COUNT ...
#define CVH_OK ...
#define CVH_ERR_ISA ...
#define CVH_ERR_NOMEM ...
#define CVH_ERR_ARG ...
#define CVH_ERR_THREAD ...
#define CVH_FILTER_NONE ...
#define CVH_FILTER_MASK ...
#define CVH_FILTER_RANGES ...

const char *cvh_isa_name(int isa);
int cvh_isa_supported(int isa);
int cvh_best_isa(void);
int cvh_cpu_count(void);
int cvh_knn(int isa, const uint8_t *queries, size_t nq, const uint8_t *codes, size_t n,
            size_t nbytes, size_t k, int threads, int filter_kind, const uint8_t *mask,
            const int64_t *ranges, size_t nranges, int32_t *out_dist, int64_t *out_ids);
int cvh_within(int isa, const uint8_t *query, const uint8_t *codes, size_t n, size_t nbytes,
               int64_t radius, int threads, int filter_kind, const uint8_t *mask,
               const int64_t *ranges, size_t nranges, int32_t **out_dist, int64_t **out_ids,
               size_t *out_count);
void cvh_free(void *p);
uint64_t cvh_stream_read(const uint8_t *data, size_t nbytes, int threads);
int cvh_distances(int isa, const uint8_t *query, const uint8_t *codes, size_t nrows,
                  size_t nbytes, uint16_t *out);
"""


def _rel(path: str) -> str:
    # setuptools wants source paths relative to the setup.py directory (the cwd).
    return os.path.relpath(path)


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "cvahash.kernel._hamming_cffi",
    '#include "hamming.h"',
    sources=[_rel(os.path.join(HERE, "hamming.c"))],
    include_dirs=[_rel(HERE)],
    depends=[_rel(os.path.join(HERE, name)) for name in ("hamming.h", "hamming_simd.h")],
    # Baseline flags only: each SIMD kernel enables its own instructions per
    # function, and the one to run is chosen at import from cpuid/hwcaps. Warnings are
    # errors, as in the aarch64 build (csrc/test_aarch64.sh); cffi's generated wrapper
    # has unused static helpers, hence -Wno-unused-function.
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                        "-Wno-unused-function"],
    libraries=[] if sys.platform == "darwin" else ["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

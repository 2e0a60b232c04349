/* cvahash: exact Hamming nearest-neighbour search over packed binary codes.
 *
 * Codes are rows of `nbytes` bytes (1..CVH_MAX_NBYTES), packed MSB-first
 * (numpy.packbits order; the order does not matter for a distance), stored
 * row-major and contiguous. Row ids are row indices, int64.
 *
 * Every search is exact and returns rows sorted by (distance, id), so the
 * result is the same for every kernel (ISA) and every thread count.
 *
 * The caller (cvahash.hamming) validates arguments; these functions still
 * check what they need to never read or write out of bounds and return a
 * negative CVH_ERR_* code instead.
 */
#ifndef CVAHASH_HAMMING_H
#define CVAHASH_HAMMING_H

#include <stddef.h>
#include <stdint.h>

#define CVH_MAX_NBYTES 1024

/* Kernel ids, also the index of cvh_isa_name(). */
#define CVH_ISA_SERIAL 0
#define CVH_ISA_AVX2 1
#define CVH_ISA_AVX512 2
#define CVH_ISA_NEON 3
#define CVH_ISA_COUNT 4

#define CVH_OK 0
#define CVH_ERR_ISA (-1)    /* kernel not compiled in or not supported by this CPU */
#define CVH_ERR_NOMEM (-2)  /* allocation failed */
#define CVH_ERR_ARG (-3)    /* an argument outside its range */
#define CVH_ERR_THREAD (-4) /* pthread_create failed */

/* Name of kernel `isa` ("serial", "avx2", "avx512", "neon"), or "" if unknown. */
const char *cvh_isa_name(int isa);

/* 1 if kernel `isa` is compiled in and this CPU (and OS) can run it, else 0. */
int cvh_isa_supported(int isa);

/* The fastest supported kernel; detection runs once. */
int cvh_best_isa(void);

/* Number of online CPUs (the meaning of threads = 0). */
int cvh_cpu_count(void);

/* Row filter. kind 0: none. kind 1: mask, n bytes, row i eligible iff mask[i] != 0.
 * kind 2: ranges, nranges pairs (start, end) of int64, sorted, non-overlapping,
 * 0 <= start <= end <= n, row i eligible iff start <= i < end for some pair. */
#define CVH_FILTER_NONE 0
#define CVH_FILTER_MASK 1
#define CVH_FILTER_RANGES 2

/* k nearest rows for each of nq queries.
 * queries: nq * nbytes bytes. codes: n * nbytes bytes.
 * k: rows wanted per query; must equal min(k, eligible rows) (the caller counts).
 * threads: worker threads (0 = cvh_cpu_count()).
 * out_dist: nq * k int32, out_ids: nq * k int64, row qi at offset qi * k,
 * sorted by (distance, id). Returns CVH_OK or a CVH_ERR_* code. */
int cvh_knn(int isa, const uint8_t *queries, size_t nq, const uint8_t *codes, size_t n,
            size_t nbytes, size_t k, int threads, int filter_kind, const uint8_t *mask,
            const int64_t *ranges, size_t nranges, int32_t *out_dist, int64_t *out_ids);

/* All rows within `radius` (distance <= radius) of one query (nbytes bytes),
 * sorted by (distance, id). On CVH_OK, *out_dist / *out_ids point to *out_count
 * entries allocated here (NULL when none); release both with cvh_free. */
int cvh_within(int isa, const uint8_t *query, const uint8_t *codes, size_t n, size_t nbytes,
               int64_t radius, int threads, int filter_kind, const uint8_t *mask,
               const int64_t *ranges, size_t nranges, int32_t **out_dist, int64_t **out_ids,
               size_t *out_count);

void cvh_free(void *p);

/* Distances of rows [0, nrows) of `codes` to `query` with kernel `isa`, into out
 * (nrows uint16). For tests of the per-ISA distance code. Returns CVH_OK or error. */
int cvh_distances(int isa, const uint8_t *query, const uint8_t *codes, size_t nrows,
                  size_t nbytes, uint16_t *out);

/* Reads nbytes of data (8-byte aligned) with `threads` threads and returns a
 * checksum: the memory-bandwidth floor the benchmark compares searches with. */
uint64_t cvh_stream_read(const uint8_t *data, size_t nbytes, int threads);

#endif

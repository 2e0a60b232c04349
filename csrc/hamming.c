/* cvahash: exact Hamming top-k over packed binary codes (see hamming.h).
 *
 * One translation unit carries every kernel: each ISA block enables its
 * instructions per function with a target attribute, so the file compiles
 * with baseline flags (cffi gives one set of flags per extension) and the
 * ISA is chosen at run time. Only the distance code differs per ISA
 * (dist_block_*); the top-k selection, threading and filters are shared, so
 * every kernel returns the same rows by construction and the serial kernel is
 * the reference the others are tested against.
 *
 * Design (FINDINGS.md: a two-pass "write all distances, then select" design
 * was slower than faiss):
 *  - one pass over the database, distances computed a block of BLOCK rows at a
 *    time into a small stack buffer together with the block minimum;
 *  - a per-(thread, query) histogram of candidate distances gives the exact
 *    threshold `limit`: a row can still enter the top-k only if d < limit, so
 *    whole blocks whose minimum is >= limit are skipped without a branch per row;
 *  - rows are visited in increasing id per (thread, query), so a later row never
 *    beats an earlier one at equal distance and the (distance, id) order needs no
 *    id comparisons; the final merge is a stable counting sort by distance;
 *  - one query: the rows are split across threads; many queries: each thread
 *    walks its rows in cache-sized tiles and runs every query of a group over a
 *    tile before moving on, so the tile is read from memory once per group.
 */
#define _GNU_SOURCE
#include "hamming.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(_M_X64)
#define CVH_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define CVH_ARM 1
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#endif

/* Rows per distance block: the stack buffer (512 B) stays in L1. */
#define BLOCK 256
/* Bytes of codes per tile in the many-query path: stays in L2 while a group of
 * queries runs over it. */
#define TILE_BYTES (96 * 1024)
/* At most this many queries share one pass (bounds per-group state memory). */
#define MAX_GROUP 64
/* Budget for the per-(thread, query) top-k state of one group. */
#define GROUP_STATE_BYTES ((size_t)96 << 20)
/* A thread gets at least this many rows; below it, threads cost more than they save. */
#define MIN_ROWS_PER_THREAD 16384

/* Computes the distance of each of `nrows` rows to `q` into out[0..nrows) and
 * returns the smallest. nrows <= BLOCK. */
typedef unsigned (*dist_block_fn)(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                  size_t nbytes, uint16_t *out);

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* unaligned-safe; byte order is irrelevant to popcount */
    return v;
}

/* Loads the last `len` (< 8) bytes into a zero-padded word. */
static inline uint64_t load_tail(const uint8_t *p, size_t len) {
    uint64_t v = 0;
    memcpy(&v, p, len);
    return v;
}

/* ------------------------------------------------------------------ serial */

static inline unsigned popcount64_serial(uint64_t x) {
    /* SWAR popcount: portable and independent of the compiler's builtin, so the
     * reference shares no code path with the SIMD kernels. */
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (unsigned)((x * 0x0101010101010101ULL) >> 56);
}

static unsigned dist_block_serial(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                  size_t nbytes, uint16_t *out) {
    unsigned mn = 0xffff;
    size_t words = nbytes / 8, tail = nbytes % 8;
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *row = rows + r * nbytes;
        unsigned d = 0;
        for (size_t w = 0; w < words; w++) d += popcount64_serial(load64(q + 8 * w) ^ load64(row + 8 * w));
        if (tail) d += popcount64_serial(load_tail(q + 8 * words, tail) ^ load_tail(row + 8 * words, tail));
        out[r] = (uint16_t)d;
        if (d < mn) mn = d;
    }
    return mn;
}

/* -------------------------------------------------------- ISA dispatch */

static const char *const isa_names[CVH_ISA_COUNT] = {"serial", "avx2", "avx512", "neon"};
static dist_block_fn isa_table[CVH_ISA_COUNT];
static int isa_ok[CVH_ISA_COUNT];
static int isa_best;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

#include "hamming_simd.h"

static void detect_isas(void) {
    isa_table[CVH_ISA_SERIAL] = dist_block_serial;
    isa_ok[CVH_ISA_SERIAL] = 1;
    isa_best = CVH_ISA_SERIAL;
    simd_register(isa_table, isa_ok);
    for (int i = 0; i < CVH_ISA_COUNT; i++)
        if (isa_ok[i] && isa_table[i]) isa_best = i; /* later entries are faster */
}

static dist_block_fn get_kernel(int isa) {
    pthread_once(&isa_once, detect_isas);
    if (isa < 0 || isa >= CVH_ISA_COUNT || !isa_ok[isa]) return NULL;
    return isa_table[isa];
}

const char *cvh_isa_name(int isa) {
    return (isa >= 0 && isa < CVH_ISA_COUNT) ? isa_names[isa] : "";
}

int cvh_isa_supported(int isa) { return get_kernel(isa) != NULL; }

int cvh_best_isa(void) {
    pthread_once(&isa_once, detect_isas);
    return isa_best;
}

int cvh_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

void cvh_free(void *p) { free(p); }

int cvh_distances(int isa, const uint8_t *query, const uint8_t *codes, size_t nrows,
                  size_t nbytes, uint16_t *out) {
    dist_block_fn f = get_kernel(isa);
    if (!f) return CVH_ERR_ISA;
    if (nbytes < 1 || nbytes > CVH_MAX_NBYTES) return CVH_ERR_ARG;
    for (size_t r = 0; r < nrows; r += BLOCK) {
        size_t m = nrows - r < BLOCK ? nrows - r : BLOCK;
        f(query, codes + r * nbytes, m, nbytes, out + r);
    }
    return CVH_OK;
}

/* ---------------------------------------------------------- top-k state */

typedef struct {
    int64_t id;
    uint32_t d;
} cand_t;

/* Candidates of one query within one thread's rows. Invariant (k finite):
 * limit = the smallest t with #candidates(d <= t) >= k (maxd + 1 while fewer
 * than k), below = #candidates(d < limit) < k. A new row (larger id than every
 * candidate) can be in the top-k only if d < limit. Candidates with d > limit
 * are stale and dropped by compaction; at most 2k - 1 are live. */
typedef struct {
    uint32_t limit;
    size_t below;
    size_t k;       /* SIZE_MAX: keep every row with d < limit (within) */
    uint32_t *hist; /* [maxd + 1] candidate counts by distance (k finite only) */
    cand_t *buf;
    size_t len, cap;
    int err;
} topk_t;

static void topk_compact(topk_t *t) {
    size_t j = 0;
    for (size_t i = 0; i < t->len; i++)
        if (t->buf[i].d <= t->limit) t->buf[j++] = t->buf[i];
    t->len = j;
}

static int topk_grow(topk_t *t) {
    size_t cap = t->cap ? 2 * t->cap : 1024;
    cand_t *b = realloc(t->buf, cap * sizeof(cand_t));
    if (!b) return -1;
    t->buf = b;
    t->cap = cap;
    return 0;
}

static inline void topk_push(topk_t *t, uint32_t d, int64_t id) {
    if (t->len == t->cap) {
        if (t->k != SIZE_MAX) topk_compact(t);
        if (t->len + t->len / 4 >= t->cap && topk_grow(t)) {
            t->err = CVH_ERR_NOMEM;
            t->limit = 0; /* stop accepting */
            return;
        }
    }
    t->buf[t->len].id = id;
    t->buf[t->len].d = d;
    t->len++;
    if (t->k == SIZE_MAX) return;
    t->hist[d]++;
    t->below++;
    while (t->below >= t->k) {
        t->limit--;
        t->below -= t->hist[t->limit];
    }
}

/* Scans rows [lo, hi) for one query. */
static void scan_rows(topk_t *t, dist_block_fn dist, const uint8_t *q, const uint8_t *codes,
                      size_t nbytes, const uint8_t *mask, size_t lo, size_t hi) {
    uint16_t d[BLOCK];
    for (size_t b = lo; b < hi; b += BLOCK) {
        size_t m = hi - b < BLOCK ? hi - b : BLOCK;
        unsigned mn = dist(q, codes + b * nbytes, m, nbytes, d);
        if (mn >= t->limit) continue; /* block skip: nothing here can enter */
        for (size_t i = 0; i < m; i++) {
            if (d[i] < t->limit && (!mask || mask[b + i])) topk_push(t, d[i], (int64_t)(b + i));
        }
    }
}

/* ------------------------------------------------------------- threads */

typedef struct {
    size_t start, end;
} span_t;

typedef struct {
    dist_block_fn dist;
    const uint8_t *queries; /* first query of the group */
    size_t nq;              /* queries in the group */
    const uint8_t *codes;
    size_t nbytes;
    const uint8_t *mask;
    const span_t *spans;
    size_t nspans;
    topk_t *states; /* [nq], this thread's */
} job_t;

static void *run_job(void *arg) {
    job_t *j = arg;
    size_t tile = TILE_BYTES / j->nbytes;
    tile = tile < BLOCK ? BLOCK : tile - tile % BLOCK;
    if (j->nq == 1) tile = SIZE_MAX; /* nothing to reuse: one sweep */
    for (size_t s = 0; s < j->nspans; s++) {
        for (size_t t0 = j->spans[s].start; t0 < j->spans[s].end;) {
            size_t t1 = j->spans[s].end - t0 < tile ? j->spans[s].end : t0 + tile;
            for (size_t qi = 0; qi < j->nq; qi++)
                scan_rows(&j->states[qi], j->dist, j->queries + qi * j->nbytes, j->codes,
                          j->nbytes, j->mask, t0, t1);
            t0 = t1;
        }
    }
    return NULL;
}

/* Splits the eligible spans into `nthreads` contiguous runs of about equal row
 * count. out must hold nspans + nthreads spans; first[t]..first[t+1] indexes
 * thread t's spans. */
static void split_spans(const span_t *spans, size_t nspans, size_t total, int nthreads,
                        span_t *out, size_t *first) {
    size_t per = (total + (size_t)nthreads - 1) / (size_t)nthreads;
    size_t si = 0, pos = nspans ? spans[0].start : 0, o = 0;
    for (int t = 0; t < nthreads; t++) {
        first[t] = o;
        size_t want = per;
        while (want > 0 && si < nspans) {
            if (pos >= spans[si].end) {
                if (++si < nspans) pos = spans[si].start;
                continue;
            }
            size_t take = spans[si].end - pos < want ? spans[si].end - pos : want;
            out[o].start = pos;
            out[o].end = pos + take;
            o++;
            pos += take;
            want -= take;
        }
    }
    first[nthreads] = o;
}

/* Merges the per-thread candidates of one query (thread order = row order, each
 * buffer in row order) into its first `kk` rows by (distance, id): a stable
 * counting sort by distance. cnt: maxd + 2 scratch. */
static void merge_query(topk_t *const *states, int nthreads, uint32_t maxd, size_t kk,
                        size_t *cnt, int32_t *out_d, int64_t *out_i) {
    memset(cnt, 0, (maxd + 2) * sizeof(size_t));
    for (int t = 0; t < nthreads; t++)
        for (size_t i = 0; i < states[t]->len; i++)
            if (states[t]->buf[i].d <= states[t]->limit) cnt[states[t]->buf[i].d + 1]++;
    for (uint32_t d = 1; d <= maxd + 1; d++) cnt[d] += cnt[d - 1];
    for (int t = 0; t < nthreads; t++)
        for (size_t i = 0; i < states[t]->len; i++) {
            const cand_t *c = &states[t]->buf[i];
            if (c->d > states[t]->limit) continue;
            size_t p = cnt[c->d]++;
            if (p < kk) {
                out_d[p] = (int32_t)c->d;
                out_i[p] = c->id;
            }
        }
}

/* threads = 0: every core, but no thread gets fewer than MIN_ROWS_PER_THREAD rows.
 * An explicit count is honoured down to one block per thread. */
static int choose_threads(int threads, size_t rows) {
    int t = threads > 0 ? threads : cvh_cpu_count();
    size_t cap = rows / (threads > 0 ? BLOCK : MIN_ROWS_PER_THREAD);
    if (cap < 1) cap = 1;
    if ((size_t)t > cap) t = (int)cap;
    if (t > 256) t = 256;
    return t;
}

/* Builds the eligible spans. Returns a malloc'd array (count in *nspans, rows in
 * *total) or NULL on error (*err set). */
static span_t *make_spans(size_t n, int filter_kind, const int64_t *ranges, size_t nranges,
                          size_t *nspans, size_t *total, int *err) {
    size_t cnt = filter_kind == CVH_FILTER_RANGES ? nranges : 1;
    span_t *s = malloc((cnt ? cnt : 1) * sizeof(span_t));
    *err = CVH_OK;
    if (!s) {
        *err = CVH_ERR_NOMEM;
        return NULL;
    }
    *total = 0;
    if (filter_kind != CVH_FILTER_RANGES) {
        s[0].start = 0;
        s[0].end = n;
        *nspans = 1;
        *total = n;
        return s;
    }
    int64_t prev = 0;
    for (size_t i = 0; i < nranges; i++) {
        int64_t a = ranges[2 * i], b = ranges[2 * i + 1];
        if (a < prev || b < a || (uint64_t)b > (uint64_t)n) {
            free(s);
            *err = CVH_ERR_ARG;
            return NULL;
        }
        s[i].start = (size_t)a;
        s[i].end = (size_t)b;
        *total += (size_t)(b - a);
        prev = b;
    }
    *nspans = nranges;
    return s;
}

/* The shared search: k finite -> knn into out_d/out_i (nq * k);
 * k == SIZE_MAX -> within(radius) for nq == 1, results malloc'd into *w_d / *w_i. */
static int search(int isa, const uint8_t *queries, size_t nq, const uint8_t *codes, size_t n,
                  size_t nbytes, size_t k, uint32_t limit0, int threads, int filter_kind,
                  const uint8_t *mask, const int64_t *ranges, size_t nranges, int32_t *out_d,
                  int64_t *out_i, int32_t **w_d, int64_t **w_i, size_t *w_count) {
    dist_block_fn dist = get_kernel(isa);
    if (!dist) return CVH_ERR_ISA;
    if (nbytes < 1 || nbytes > CVH_MAX_NBYTES || k < 1) return CVH_ERR_ARG;
    if (filter_kind < CVH_FILTER_NONE || filter_kind > CVH_FILTER_RANGES) return CVH_ERR_ARG;
    if (filter_kind == CVH_FILTER_MASK && !mask) return CVH_ERR_ARG;
    if (filter_kind != CVH_FILTER_MASK) mask = NULL;
    if (nq == 0) return CVH_OK;
    const uint32_t maxd = (uint32_t)(8 * nbytes);
    const int within = k == SIZE_MAX;

    size_t nspans, total;
    int err;
    span_t *spans = make_spans(n, filter_kind, ranges, nranges, &nspans, &total, &err);
    if (!spans) return err;
    if (!within && k > total) {
        free(spans);
        return CVH_ERR_ARG; /* caller must pass min(k, eligible) */
    }
    int nthreads = choose_threads(threads, total);

    /* Queries per group: bounded by MAX_GROUP and by state memory. */
    size_t state_bytes = within ? 1024 * sizeof(cand_t)
                                : (maxd + 1) * sizeof(uint32_t) + (3 * k + 64) * sizeof(cand_t);
    size_t group = GROUP_STATE_BYTES / (state_bytes * (size_t)nthreads);
    if (group > MAX_GROUP) group = MAX_GROUP;
    if (group < 1) group = 1;
    if (group > nq) group = nq;

    size_t nstates = group * (size_t)nthreads;
    span_t *tspans = malloc((nspans + (size_t)nthreads) * sizeof(span_t));
    size_t *first = malloc(((size_t)nthreads + 1) * sizeof(size_t));
    topk_t *states = calloc(nstates, sizeof(topk_t));
    uint32_t *hists = within ? NULL : malloc(nstates * (maxd + 1) * sizeof(uint32_t));
    job_t *jobs = malloc((size_t)nthreads * sizeof(job_t));
    pthread_t *tids = malloc((size_t)nthreads * sizeof(pthread_t));
    topk_t **qstates = malloc((size_t)nthreads * sizeof(topk_t *));
    size_t *cnt = malloc((maxd + 2) * sizeof(size_t));
    int rc = CVH_OK;
    if (!tspans || !first || !states || (!within && !hists) || !jobs || !tids || !qstates || !cnt) {
        rc = CVH_ERR_NOMEM;
        goto done;
    }
    split_spans(spans, nspans, total, nthreads, tspans, first);
    for (size_t s = 0; s < nstates; s++) {
        states[s].cap = within ? 0 : 3 * k + 64;
        if (states[s].cap) {
            states[s].buf = malloc(states[s].cap * sizeof(cand_t));
            if (!states[s].buf) {
                rc = CVH_ERR_NOMEM;
                goto done;
            }
        }
        states[s].hist = within ? NULL : hists + s * (maxd + 1);
    }

    for (size_t g0 = 0; g0 < nq && rc == CVH_OK; g0 += group) {
        size_t gn = nq - g0 < group ? nq - g0 : group;
        for (int t = 0; t < nthreads; t++) {
            for (size_t qi = 0; qi < gn; qi++) {
                topk_t *st = &states[(size_t)t * group + qi];
                st->limit = limit0;
                st->below = 0;
                st->k = k;
                st->len = 0;
                st->err = CVH_OK;
                if (st->hist) memset(st->hist, 0, (maxd + 1) * sizeof(uint32_t));
            }
            jobs[t] = (job_t){dist, queries + g0 * nbytes, gn, codes, nbytes, mask,
                              tspans + first[t], first[t + 1] - first[t], &states[(size_t)t * group]};
        }
        int started = 0;
        for (int t = 1; t < nthreads; t++) {
            if (pthread_create(&tids[t], NULL, run_job, &jobs[t]) != 0) {
                rc = CVH_ERR_THREAD;
                break;
            }
            started = t;
        }
        if (rc == CVH_OK) run_job(&jobs[0]);
        for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
        if (rc != CVH_OK) break;
        for (size_t s = 0; s < (size_t)nthreads * group; s++)
            if (states[s].err) rc = states[s].err;
        if (rc != CVH_OK) break;

        for (size_t qi = 0; qi < gn; qi++) {
            size_t live = 0;
            for (int t = 0; t < nthreads; t++) {
                qstates[t] = &states[(size_t)t * group + qi];
                live += qstates[t]->len;
            }
            if (within) {
                *w_count = live;
                *w_d = malloc((live ? live : 1) * sizeof(int32_t));
                *w_i = malloc((live ? live : 1) * sizeof(int64_t));
                if (!*w_d || !*w_i) {
                    free(*w_d);
                    free(*w_i);
                    *w_d = NULL;
                    *w_i = NULL;
                    rc = CVH_ERR_NOMEM;
                    break;
                }
                merge_query(qstates, nthreads, maxd, live, cnt, *w_d, *w_i);
            } else {
                size_t o = (g0 + qi) * k;
                merge_query(qstates, nthreads, maxd, k, cnt, out_d + o, out_i + o);
            }
        }
    }

done:
    if (states)
        for (size_t s = 0; s < nstates; s++) free(states[s].buf);
    free(spans);
    free(tspans);
    free(first);
    free(states);
    free(hists);
    free(jobs);
    free(tids);
    free(qstates);
    free(cnt);
    return rc;
}

int cvh_knn(int isa, const uint8_t *queries, size_t nq, const uint8_t *codes, size_t n,
            size_t nbytes, size_t k, int threads, int filter_kind, const uint8_t *mask,
            const int64_t *ranges, size_t nranges, int32_t *out_dist, int64_t *out_ids) {
    if (k == SIZE_MAX) return CVH_ERR_ARG;
    return search(isa, queries, nq, codes, n, nbytes, k, (uint32_t)(8 * nbytes + 1), threads,
                  filter_kind, mask, ranges, nranges, out_dist, out_ids, NULL, NULL, NULL);
}

int cvh_within(int isa, const uint8_t *query, const uint8_t *codes, size_t n, size_t nbytes,
               int64_t radius, int threads, int filter_kind, const uint8_t *mask,
               const int64_t *ranges, size_t nranges, int32_t **out_dist, int64_t **out_ids,
               size_t *out_count) {
    *out_dist = NULL;
    *out_ids = NULL;
    *out_count = 0;
    if (radius < 0 || nbytes < 1 || nbytes > CVH_MAX_NBYTES) return CVH_ERR_ARG;
    uint32_t limit = radius >= (int64_t)(8 * nbytes) ? (uint32_t)(8 * nbytes + 1) : (uint32_t)radius + 1;
    return search(isa, query, 1, codes, n, nbytes, SIZE_MAX, limit, threads, filter_kind, mask,
                  ranges, nranges, NULL, NULL, out_dist, out_ids, out_count);
}

/* ---------------------------------------------------- bandwidth floor */

typedef struct {
    const uint64_t *p;
    size_t words;
    uint64_t sum;
} stream_job_t;

static void *stream_job(void *arg) {
    stream_job_t *j = arg;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= j->words; i += 4) {
        a += j->p[i];
        b ^= j->p[i + 1];
        c += j->p[i + 2];
        d ^= j->p[i + 3];
    }
    for (; i < j->words; i++) a += j->p[i];
    j->sum = a + b + c + d;
    return NULL;
}

uint64_t cvh_stream_read(const uint8_t *data, size_t nbytes, int threads) {
    int t = threads > 0 ? threads : cvh_cpu_count();
    if (t > 64) t = 64;
    size_t words = nbytes / 8, per = (words + (size_t)t - 1) / (size_t)t;
    stream_job_t jobs[64];
    pthread_t tids[64];
    int started = 0;
    for (int i = 0; i < t; i++) {
        size_t lo = (size_t)i * per < words ? (size_t)i * per : words;
        size_t hi = lo + per < words ? lo + per : words;
        jobs[i] = (stream_job_t){(const uint64_t *)data + lo, hi - lo, 0};
    }
    for (int i = 1; i < t; i++) {
        if (pthread_create(&tids[i], NULL, stream_job, &jobs[i]) != 0) break;
        started = i;
    }
    stream_job(&jobs[0]);
    for (int i = started + 1; i < t; i++) stream_job(&jobs[i]); /* threads that did not start */
    for (int i = 1; i <= started; i++) pthread_join(tids[i], NULL);
    uint64_t s = 0;
    for (int i = 0; i < t; i++) s += jobs[i].sum;
    return s;
}

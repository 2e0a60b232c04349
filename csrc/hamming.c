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
 * Design (docs/architecture.md, measured facts: a two-pass "write all distances, then select" design
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
#include <sched.h>
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

/* Marks the rows of a span (nrows <= SPAN) whose distance to `q` is below `limit`
 * (see the marking kernels in hamming_simd.h). An ISA may have one for some widths;
 * a one-query scan then needs no distance store for the rows that cannot enter. */
typedef size_t (*mark_block_fn)(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                unsigned limit, uint16_t *d, uint64_t *bits);

/* Rows per span of a marking kernel. */
#define SPAN 1024

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

/* Scans rows [lo, hi) of one block-aligned stretch for one query. */
static void scan_blocks(topk_t *t, dist_block_fn dist, const uint8_t *q, const uint8_t *codes,
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

/* Scans rows [lo, hi) for one query: with a marking kernel, only the rows whose
 * distance is below the current threshold are looked at (the threshold may drop
 * while a span's marked rows are pushed, so each is tested again). */
static void scan_rows(topk_t *t, dist_block_fn dist, mark_block_fn mark, const uint8_t *q,
                      const uint8_t *codes, size_t nbytes, const uint8_t *mask, size_t lo,
                      size_t hi) {
    if (!mark) {
        scan_blocks(t, dist, q, codes, nbytes, mask, lo, hi);
        return;
    }
    uint16_t d[SPAN];
    uint64_t bits[SPAN / 64];
    for (size_t b = lo; b < hi; b += SPAN) {
        size_t m = hi - b < SPAN ? hi - b : SPAN;
        if (!mark(q, codes + b * nbytes, m, t->limit, d, bits)) continue;
        for (size_t w = 0; w * 64 < m; w++) {
            for (uint64_t x = bits[w]; x; x &= x - 1) {
                size_t i = 64 * w + (size_t)__builtin_ctzll(x);
                if (d[i] < t->limit && (!mask || mask[b + i])) topk_push(t, d[i], (int64_t)(b + i));
            }
        }
    }
}

/* ------------------------------------------------------------- threads
 *
 * Work is cut into chunks of eligible rows that threads claim from an atomic
 * counter, so a thread that is slow to start (a busy core on a shared machine, the
 * capture daemon on a Pi) costs nothing: the caller's thread takes its chunks. Each
 * thread (slot) keeps its own top-k state per query and claims chunks in increasing
 * order, so the rows it sees still come in increasing id. The caller never waits for
 * a helper that has not claimed work: helpers are detached and the search context
 * is freed by whoever releases it last.
 */

typedef struct {
    size_t start, end;
} span_t;

typedef struct {
    /* set up before any helper starts, read-only afterwards */
    dist_block_fn dist;
    mark_block_fn mark; /* one query only; NULL: none for this ISA and width */
    const uint8_t *queries; /* first query of the group, group * nbytes bytes */
    size_t group;           /* queries in this pass */
    const uint8_t *codes;
    size_t nbytes;
    const uint8_t *mask;
    const span_t *chunks; /* borrowed: freed by the caller after all claims ended */
    size_t nchunks;
    topk_t *states; /* [nslots * group]: slot s, query qi at s * group + qi */
    int nslots;
    /* shared, atomic */
    size_t next_chunk;
    int busy;      /* threads between their first claim and their last */
    int refs;      /* caller + helpers still holding the context */
    int next_slot; /* helpers take slots 1, 2, ...; the caller has slot 0 */
} pass_t;

static void pass_free(pass_t *p) {
    for (size_t s = 0; s < (size_t)p->nslots * p->group; s++) free(p->states[s].buf);
    if (p->states) free(p->states[0].hist); /* one allocation for every histogram */
    free(p->states);
    free(p);
}

static void pass_release(pass_t *p) {
    if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0) pass_free(p);
}

static void pass_work(pass_t *p, int slot) {
    topk_t *st = p->states + (size_t)slot * p->group;
    /* busy is raised before the first claim: once the caller has seen the chunks
     * run out and busy == 0, any later claim fails and touches no state. */
    __atomic_add_fetch(&p->busy, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        size_t c = __atomic_fetch_add(&p->next_chunk, 1, __ATOMIC_SEQ_CST);
        if (c >= p->nchunks) break;
        for (size_t qi = 0; qi < p->group; qi++)
            scan_rows(&st[qi], p->dist, p->mark, p->queries + qi * p->nbytes, p->codes,
                      p->nbytes, p->mask, p->chunks[c].start, p->chunks[c].end);
    }
    __atomic_sub_fetch(&p->busy, 1, __ATOMIC_SEQ_CST);
}

static void *pass_helper(void *arg) {
    pass_t *p = arg;
    int slot = __atomic_add_fetch(&p->next_slot, 1, __ATOMIC_SEQ_CST);
    if (slot < p->nslots) pass_work(p, slot);
    pass_release(p);
    return NULL;
}

/* Runs one pass with nslots - 1 helpers; returns after every claimed chunk is done. */
static void pass_run(pass_t *p) {
    pthread_attr_t attr;
    int have_attr = pthread_attr_init(&attr) == 0 &&
                    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
    p->refs = 1;
    for (int t = 1; t < p->nslots && have_attr; t++) {
        pthread_t tid;
        __atomic_add_fetch(&p->refs, 1, __ATOMIC_SEQ_CST);
        if (pthread_create(&tid, &attr, pass_helper, p) != 0) {
            __atomic_sub_fetch(&p->refs, 1, __ATOMIC_SEQ_CST);
            break; /* fewer helpers: the caller does their share */
        }
    }
    if (have_attr) pthread_attr_destroy(&attr);
    pass_work(p, 0);
    while (__atomic_load_n(&p->busy, __ATOMIC_SEQ_CST) != 0) sched_yield();
}

static int cmp_id(const void *a, const void *b) {
    int64_t x = ((const cand_t *)a)->id, y = ((const cand_t *)b)->id;
    return (x > y) - (x < y);
}

/* Merges every slot's live candidates of one query into its first kk rows by
 * (distance, id): a counting sort by distance into tmp, then ids sorted within
 * each distance that reaches the first kk (slots interleave their chunks).
 * cnt: maxd + 2 scratch; tmp: room for every live candidate. */
static void merge_query(const pass_t *p, size_t qi, uint32_t maxd, size_t kk, size_t *cnt,
                        cand_t *tmp, int32_t *out_d, int64_t *out_i) {
    memset(cnt, 0, (maxd + 2) * sizeof(size_t));
    for (int s = 0; s < p->nslots; s++) {
        const topk_t *t = &p->states[(size_t)s * p->group + qi];
        for (size_t i = 0; i < t->len; i++)
            if (t->buf[i].d <= t->limit) cnt[t->buf[i].d + 1]++;
    }
    for (uint32_t d = 1; d <= maxd + 1; d++) cnt[d] += cnt[d - 1];
    size_t live = cnt[maxd + 1];
    for (int s = 0; s < p->nslots; s++) {
        const topk_t *t = &p->states[(size_t)s * p->group + qi];
        for (size_t i = 0; i < t->len; i++)
            if (t->buf[i].d <= t->limit) tmp[cnt[t->buf[i].d]++] = t->buf[i];
    }
    /* cnt[d] is now the end of distance d's run */
    size_t start = 0;
    for (uint32_t d = 0; d <= maxd && start < kk && start < live; d++) {
        size_t end = cnt[d];
        if (p->nslots > 1 && end - start > 1) qsort(tmp + start, end - start, sizeof(cand_t), cmp_id);
        start = end;
    }
    for (size_t j = 0; j < kk && j < live; j++) {
        out_d[j] = (int32_t)tmp[j].d;
        out_i[j] = tmp[j].id;
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

/* Cuts the eligible rows (all n, or the given ranges) into chunks of at most
 * `rows` rows. Returns a malloc'd array (count in *nchunks, eligible rows in
 * *total) or NULL with *err set. */
static span_t *make_chunks(size_t n, int filter_kind, const int64_t *ranges, size_t nranges,
                           size_t rows, size_t *nchunks, size_t *total, int *err) {
    span_t whole = {0, n};
    size_t nspans = filter_kind == CVH_FILTER_RANGES ? nranges : 1;
    *total = 0;
    *err = CVH_OK;
    int64_t prev = 0;
    size_t count = 0;
    for (size_t i = 0; i < nspans; i++) {
        if (filter_kind == CVH_FILTER_RANGES) {
            int64_t a = ranges[2 * i], b = ranges[2 * i + 1];
            if (a < prev || b < a || (uint64_t)b > (uint64_t)n) {
                *err = CVH_ERR_ARG; /* unsorted, overlapping or out of bounds */
                return NULL;
            }
            prev = b;
            count += ((size_t)(b - a) + rows - 1) / rows;
            *total += (size_t)(b - a);
        } else {
            count += (n + rows - 1) / rows;
            *total = n;
        }
    }
    span_t *out = malloc((count ? count : 1) * sizeof(span_t));
    if (!out) {
        *err = CVH_ERR_NOMEM;
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < nspans; i++) {
        span_t s = filter_kind == CVH_FILTER_RANGES
                       ? (span_t){(size_t)ranges[2 * i], (size_t)ranges[2 * i + 1]}
                       : whole;
        for (size_t a = s.start; a < s.end; a += rows) {
            out[o].start = a;
            out[o].end = s.end - a < rows ? s.end : a + rows;
            o++;
        }
    }
    *nchunks = o;
    return out;
}

/* Allocates a pass for `group` queries and nslots threads, states reset. */
static pass_t *pass_new(size_t group, int nslots, size_t k, uint32_t limit0, uint32_t maxd) {
    const int within = k == SIZE_MAX;
    size_t nstates = group * (size_t)nslots;
    pass_t *p = calloc(1, sizeof(pass_t));
    if (!p) return NULL;
    p->group = group;
    p->nslots = nslots;
    p->states = calloc(nstates, sizeof(topk_t));
    uint32_t *hists = within ? NULL : calloc(nstates * (maxd + 1), sizeof(uint32_t));
    if (!p->states || (!within && !hists)) {
        free(hists);
        p->nslots = 0;
        pass_free(p);
        return NULL;
    }
    for (size_t s = 0; s < nstates; s++) {
        topk_t *st = &p->states[s];
        st->limit = limit0;
        st->k = k;
        st->hist = within ? NULL : hists + s * (maxd + 1);
        st->cap = within ? 0 : 3 * k + 64;
        if (st->cap && !(st->buf = malloc(st->cap * sizeof(cand_t)))) {
            pass_free(p); /* frees hists through states[0].hist */
            return NULL;
        }
    }
    return p;
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
    if (filter_kind == CVH_FILTER_RANGES && nranges && !ranges) return CVH_ERR_ARG;
    if (filter_kind != CVH_FILTER_MASK) mask = NULL;
    if (nq == 0) return CVH_OK;
    const uint32_t maxd = (uint32_t)(8 * nbytes);
    const int within = k == SIZE_MAX;

    /* Count eligible rows first (chunk size depends on it). */
    size_t nchunks, total;
    int rc;
    span_t *chunks = make_chunks(n, filter_kind, ranges, nranges, SIZE_MAX / 2, &nchunks, &total, &rc);
    if (!chunks) return rc;
    free(chunks);
    if (!within && k > total) return CVH_ERR_ARG; /* caller passes min(k, eligible) */
    int nslots = choose_threads(threads, total);

    /* One query: chunks big enough to amortise the claim, small enough to balance.
     * Many queries: a chunk is a tile that stays in L2 while the group runs over it. */
    size_t tile = TILE_BYTES / nbytes;
    size_t rows = nq == 1 ? (size_t)1 << 15 : tile;
    size_t balance = (total + (size_t)nslots * 4 - 1) / ((size_t)nslots * 4);
    if (nslots > 1 && rows > balance) rows = balance;
    rows = rows < BLOCK ? BLOCK : (rows + BLOCK - 1) / BLOCK * BLOCK;
    chunks = make_chunks(n, filter_kind, ranges, nranges, rows, &nchunks, &total, &rc);
    if (!chunks) return rc;

    /* Queries per pass: bounded by MAX_GROUP and by state memory. */
    size_t state_bytes = within ? 1024 * sizeof(cand_t)
                                : (maxd + 1) * sizeof(uint32_t) + (3 * k + 64) * sizeof(cand_t);
    size_t group = GROUP_STATE_BYTES / (state_bytes * (size_t)nslots);
    if (group > MAX_GROUP) group = MAX_GROUP;
    if (group < 1) group = 1;
    if (group > nq) group = nq;

    size_t *cnt = malloc((maxd + 2) * sizeof(size_t));
    rc = cnt ? CVH_OK : CVH_ERR_NOMEM;
    for (size_t g0 = 0; g0 < nq && rc == CVH_OK; g0 += group) {
        size_t gn = nq - g0 < group ? nq - g0 : group;
        pass_t *p = pass_new(gn, nslots, k, limit0, maxd);
        if (!p) {
            rc = CVH_ERR_NOMEM;
            break;
        }
        p->dist = dist;
        p->mark = nq == 1 ? simd_mark_kernel(isa, nbytes) : NULL;
        p->queries = queries + g0 * nbytes;
        p->codes = codes;
        p->nbytes = nbytes;
        p->mask = mask;
        p->chunks = chunks;
        p->nchunks = nchunks;
        pass_run(p);
        for (size_t s = 0; s < (size_t)nslots * gn; s++)
            if (p->states[s].err) rc = p->states[s].err;
        for (size_t qi = 0; qi < gn && rc == CVH_OK; qi++) {
            size_t live = 0;
            for (int s = 0; s < nslots; s++) live += p->states[(size_t)s * gn + qi].len;
            cand_t *tmp = malloc((live ? live : 1) * sizeof(cand_t));
            if (!tmp) {
                rc = CVH_ERR_NOMEM;
                break;
            }
            if (within) {
                *w_d = malloc((live ? live : 1) * sizeof(int32_t));
                *w_i = malloc((live ? live : 1) * sizeof(int64_t));
                if (!*w_d || !*w_i) {
                    free(*w_d);
                    free(*w_i);
                    *w_d = NULL;
                    *w_i = NULL;
                    rc = CVH_ERR_NOMEM;
                } else {
                    merge_query(p, qi, maxd, live, cnt, tmp, *w_d, *w_i);
                    *w_count = live;
                }
            } else {
                size_t o = (g0 + qi) * k;
                merge_query(p, qi, maxd, k, cnt, tmp, out_d + o, out_i + o);
            }
            free(tmp);
        }
        /* Late helpers may still hold p (they will find no chunk); the last frees it.
         * Chunks are only read after a successful claim, and none is left. */
        pass_release(p);
    }
    free(chunks);
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

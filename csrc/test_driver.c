/* C test driver: every SIMD kernel this CPU supports against the serial kernel and
 * against a bit-by-bit reference, for distances, knn and within.
 *
 * Built by csrc/test_aarch64.sh for aarch64 (NEON) and run under qemu-aarch64, so
 * the Raspberry Pi / Jetson path is checked for exactness on any workstation; it
 * also builds and runs natively. Usage: test_driver [--require ISA]. Exit status 0
 * when every comparison matched.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hamming.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t next_u64(void) { /* xorshift64*: reproducible across platforms */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static int failures = 0, checks = 0;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        checks++;                                          \
        if (!(cond)) {                                     \
            failures++;                                    \
            if (failures <= 20) {                          \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
                fprintf(stderr, __VA_ARGS__);              \
                fputc('\n', stderr);                       \
            }                                              \
        }                                                  \
    } while (0)

static unsigned ref_dist(const uint8_t *a, const uint8_t *b, size_t nbytes) {
    unsigned d = 0;
    for (size_t i = 0; i < nbytes; i++)
        for (int bit = 0; bit < 8; bit++) d += ((a[i] ^ b[i]) >> bit) & 1;
    return d;
}

/* Random codes with planted near-duplicates of q (ties at small distances). */
static void fill_codes(uint8_t *codes, size_t n, size_t nbytes, const uint8_t *q) {
    for (size_t i = 0; i < n * nbytes; i++) codes[i] = (uint8_t)next_u64();
    for (size_t r = 0; r < n; r += 5) {
        memcpy(codes + r * nbytes, q, nbytes);
        unsigned flips = (unsigned)(r / 5 % 4);
        for (unsigned f = 0; f < flips; f++) {
            size_t bit = next_u64() % (8 * nbytes);
            codes[r * nbytes + bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
    }
}

typedef struct {
    uint32_t d;
    int64_t id;
} pair_t;

static int cmp_pair(const void *a, const void *b) {
    const pair_t *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Eligible rows sorted by (distance, id); returns their count. */
static size_t ref_sorted(const uint8_t *q, const uint8_t *codes, size_t n, size_t nbytes,
                         const uint8_t *mask, pair_t *out) {
    size_t m = 0;
    for (size_t r = 0; r < n; r++) {
        if (mask && !mask[r]) continue;
        out[m].d = ref_dist(q, codes + r * nbytes, nbytes);
        out[m].id = (int64_t)r;
        m++;
    }
    qsort(out, m, sizeof(pair_t), cmp_pair);
    return m;
}

static void test_width(int isa, size_t nbytes, size_t n) {
    uint8_t *q = malloc(nbytes);
    uint8_t *codes = malloc(n * nbytes + 1);
    uint8_t *mask = malloc(n + 1);
    uint16_t *d_isa = malloc((n + 1) * sizeof(uint16_t));
    pair_t *ref = malloc((n + 1) * sizeof(pair_t));
    int32_t *od = malloc((n + 1) * sizeof(int32_t)), *od_s = malloc((n + 1) * sizeof(int32_t));
    int64_t *oi = malloc((n + 1) * sizeof(int64_t)), *oi_s = malloc((n + 1) * sizeof(int64_t));
    for (size_t i = 0; i < nbytes; i++) q[i] = (uint8_t)next_u64();
    fill_codes(codes, n, nbytes, q);
    for (size_t r = 0; r < n; r++) mask[r] = (next_u64() % 10) < 6;
    /* ranges covering the mask's rows would be arbitrary; use two fixed spans */
    int64_t ranges[4] = {(int64_t)(n / 10), (int64_t)(n / 3), (int64_t)(n / 2), (int64_t)n};

    /* distances */
    CHECK(cvh_distances(isa, q, codes, n, nbytes, d_isa) == CVH_OK, "distances rc");
    for (size_t r = 0; r < n; r++) {
        unsigned want = ref_dist(q, codes + r * nbytes, nbytes);
        CHECK(d_isa[r] == want, "%s width %zu row %zu: %u != %u", cvh_isa_name(isa), nbytes, r,
              d_isa[r], want);
        if (d_isa[r] != want) break;
    }

    for (int fk = 0; fk < 3; fk++) {
        const uint8_t *m = fk == CVH_FILTER_MASK ? mask : NULL;
        uint8_t *rmask = NULL;
        if (fk == CVH_FILTER_RANGES) {
            rmask = calloc(n + 1, 1);
            for (int i = 0; i < 2; i++)
                for (int64_t r = ranges[2 * i]; r < ranges[2 * i + 1]; r++) rmask[r] = 1;
        }
        size_t eligible = ref_sorted(q, codes, n, nbytes, fk == CVH_FILTER_RANGES ? rmask : m, ref);
        size_t ks[4] = {1, 10, 1000, n + 5};
        for (int ki = 0; ki < 4; ki++) {
            size_t k = ks[ki] < eligible ? ks[ki] : eligible;
            if (k == 0) continue;
            for (int threads = 1; threads <= 2; threads++) {
                int rc = cvh_knn(isa, q, 1, codes, n, nbytes, k, threads, fk, m, ranges, 2, od, oi);
                int rc_s = cvh_knn(CVH_ISA_SERIAL, q, 1, codes, n, nbytes, k, threads, fk, m,
                                   ranges, 2, od_s, oi_s);
                CHECK(rc == CVH_OK && rc_s == CVH_OK, "knn rc %d %d", rc, rc_s);
                for (size_t j = 0; j < k; j++) {
                    int ok = od[j] == (int32_t)ref[j].d && oi[j] == ref[j].id && od_s[j] == od[j] &&
                             oi_s[j] == oi[j];
                    CHECK(ok, "%s knn width %zu n %zu k %zu threads %d filter %d rank %zu: "
                          "(%d,%lld) serial (%d,%lld) ref (%u,%lld)", cvh_isa_name(isa), nbytes, n,
                          k, threads, fk, j, od[j], (long long)oi[j], od_s[j], (long long)oi_s[j],
                          ref[j].d, (long long)ref[j].id);
                    if (!ok) break;
                }
            }
        }
        /* within */
        int64_t radii[3] = {0, 3, (int64_t)(4 * nbytes)};
        for (int ri = 0; ri < 3; ri++) {
            int32_t *wd;
            int64_t *wi;
            size_t cnt;
            int rc = cvh_within(isa, q, codes, n, nbytes, radii[ri], 2, fk, m, ranges, 2, &wd, &wi, &cnt);
            CHECK(rc == CVH_OK, "within rc %d", rc);
            size_t want = 0;
            while (want < eligible && ref[want].d <= (uint32_t)radii[ri]) want++;
            CHECK(cnt == want, "%s within width %zu radius %lld: %zu rows, want %zu",
                  cvh_isa_name(isa), nbytes, (long long)radii[ri], cnt, want);
            for (size_t j = 0; j < cnt && j < want; j++) {
                int ok = wd[j] == (int32_t)ref[j].d && wi[j] == ref[j].id;
                CHECK(ok, "%s within width %zu rank %zu", cvh_isa_name(isa), nbytes, j);
                if (!ok) break;
            }
            cvh_free(wd);
            cvh_free(wi);
        }
        free(rmask);
    }
    free(q), free(codes), free(mask), free(d_isa), free(ref);
    free(od), free(od_s), free(oi), free(oi_s);
}

int main(int argc, char **argv) {
    const char *require = argc > 2 && !strcmp(argv[1], "--require") ? argv[2] : NULL;
    int tested = 0;
    static const size_t widths[] = {1, 3, 8, 9, 16, 17, 32, 33, 64, 100, 128, 1024};
    static const size_t sizes[] = {0, 1, 255, 257, 3000};
    for (int isa = 0; isa < CVH_ISA_COUNT; isa++) {
        if (!cvh_isa_supported(isa)) continue;
        tested |= 1 << isa;
        for (size_t w = 0; w < sizeof widths / sizeof *widths; w++)
            for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
                test_width(isa, widths[w], widths[w] >= 128 ? sizes[s] / 4 : sizes[s]);
        test_width(isa, 8, 40000);
        test_width(isa, 32, 20000);
        printf("%s: checked\n", cvh_isa_name(isa));
    }
    if (require) {
        int found = 0;
        for (int isa = 0; isa < CVH_ISA_COUNT; isa++)
            if (!strcmp(cvh_isa_name(isa), require)) found = (tested >> isa) & 1;
        CHECK(found, "required kernel %s is not supported here", require);
    }
    printf("best kernel: %s; %d checks, %d failures\n", cvh_isa_name(cvh_best_isa()), checks, failures);
    return failures ? 1 : 0;
}

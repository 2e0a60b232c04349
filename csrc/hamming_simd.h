/* Per-ISA distance kernels for hamming.c (included once, from there; it relies
 * on dist_block_fn, load64, load_tail and the CVH_X86 / CVH_ARM switches).
 *
 * Each kernel fills out[0..nrows) with the distance of each row to q and returns
 * the minimum, with fast paths for 8/16/32/64-byte codes chosen by a switch
 * outside the row loop and a per-row path for every other width. Functions carry
 * their own target attribute, so baseline compiler flags build every kernel and
 * nothing here runs unless detection (cpuid + xgetbv, or hwcaps) says the CPU and
 * OS support it.
 */

/* ============================================================== x86-64 */
#if defined(CVH_X86)

#define T_AVX2 __attribute__((target("avx2,popcnt")))
#define T_AVX512 __attribute__((target("avx2,popcnt,avx512f,avx512bw,avx512vl,avx512vpopcntdq")))

T_AVX2 static inline __m256i avx2_popcnt_bytes(__m256i v) {
    /* Nibble lookup (Mula): per-byte popcount with two pshufb. */
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(v, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

/* popcount of (q ^ row) summed per 64-bit lane: 4 partial sums. */
T_AVX2 static inline __m256i avx2_sad_xor(const uint8_t *p, __m256i qv) {
    __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), qv);
    return _mm256_sad_epu8(avx2_popcnt_bytes(x), _mm256_setzero_si256());
}

/* Packs the low 16 bits of each qword of a, b, c, d into one vector: qword j
 * holds (a_j, b_j, c_j, d_j). */
T_AVX2 static inline __m256i avx2_pack4(__m256i a, __m256i b, __m256i c, __m256i d) {
    return _mm256_or_si256(_mm256_or_si256(a, _mm256_slli_epi64(b, 16)),
                           _mm256_or_si256(_mm256_slli_epi64(c, 32), _mm256_slli_epi64(d, 48)));
}

T_AVX2 static inline unsigned hmin_u16x8(__m128i v) {
    return (unsigned)(_mm_cvtsi128_si32(_mm_minpos_epu16(v)) & 0xffff);
}

/* Any width, one row at a time: whole 32-byte chunks by nibble lookup, the rest
 * by scalar popcnt. */
T_AVX2 static unsigned avx2_rows_any(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                     size_t nbytes, uint16_t *out) {
    unsigned mn = 0xffff;
    size_t chunks = nbytes / 32, rest = nbytes % 32, words = rest / 8, tail = rest % 8;
    const uint8_t *qr = q + 32 * chunks;
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *row = rows + r * nbytes;
        unsigned d = 0;
        if (chunks) {
            __m256i acc = _mm256_setzero_si256();
            for (size_t c = 0; c < chunks; c++)
                acc = _mm256_add_epi64(acc, avx2_sad_xor(row + 32 * c,
                                                         _mm256_loadu_si256((const __m256i *)(q + 32 * c))));
            __m128i s = _mm_add_epi64(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
            d = (unsigned)_mm_cvtsi128_si64(s);
        }
        const uint8_t *rr = row + 32 * chunks;
        for (size_t w = 0; w < words; w++)
            d += (unsigned)_mm_popcnt_u64(load64(qr + 8 * w) ^ load64(rr + 8 * w));
        if (tail)
            d += (unsigned)_mm_popcnt_u64(load_tail(qr + 8 * words, tail) ^ load_tail(rr + 8 * words, tail));
        out[r] = (uint16_t)d;
        if (d < mn) mn = d;
    }
    return mn;
}

/* 8-byte codes: 16 rows per step, 4 rows per vector. The qword sums are narrowed
 * with saturating packs (3 instructions for 16 rows) and put back in row order with
 * one cross-lane permute. */
T_AVX2 static unsigned avx2_rows8(const uint8_t *q, const uint8_t *rows, size_t nrows, uint16_t *out) {
    const __m256i qv = _mm256_set1_epi64x((long long)load64(q));
    /* after the packs, dword j of lane 0 holds rows (4j, 4j+1), of lane 1 (4j+2, 4j+3) */
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i vmin = _mm256_set1_epi16(-1);
    size_t r = 0;
    for (; r + 16 <= nrows; r += 16) {
        const uint8_t *p = rows + r * 8;
        __m256i a = _mm256_packus_epi32(avx2_sad_xor(p, qv), avx2_sad_xor(p + 32, qv));
        __m256i b = _mm256_packus_epi32(avx2_sad_xor(p + 64, qv), avx2_sad_xor(p + 96, qv));
        __m256i v = _mm256_packus_epi32(a, b);
        vmin = _mm256_min_epu16(vmin, v); /* order does not matter for the minimum */
        _mm256_storeu_si256((__m256i *)(out + r), _mm256_permutevar8x32_epi32(v, perm));
    }
    unsigned mn = hmin_u16x8(_mm_min_epu16(_mm256_castsi256_si128(vmin), _mm256_extracti128_si256(vmin, 1)));
    if (r < nrows) {
        unsigned m2 = avx2_rows_any(q, rows + r * 8, nrows - r, 8, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

/* Byte counts of 4 rows of 16 bytes (2 per vector) -> qword sums of rows
 * [0, 2, 1, 3]: the two halves of each row are added as bytes (<= 16) first. */
T_AVX2 static inline __m256i avx2_sum16x4(const uint8_t *p, __m256i qv) {
    __m256i c0 = avx2_popcnt_bytes(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), qv));
    __m256i c1 = avx2_popcnt_bytes(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32)), qv));
    __m256i halves = _mm256_add_epi8(_mm256_unpacklo_epi64(c0, c1), _mm256_unpackhi_epi64(c0, c1));
    return _mm256_sad_epu8(halves, _mm256_setzero_si256());
}

/* 16-byte codes: 16 rows per step, 2 rows per vector. */
T_AVX2 static unsigned avx2_rows16(const uint8_t *q, const uint8_t *rows, size_t nrows, uint16_t *out) {
    const __m256i qv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
    __m256i vmin = _mm256_set1_epi16(-1);
    size_t r = 0;
    for (; r + 16 <= nrows; r += 16) {
        const uint8_t *p = rows + r * 16;
        __m256i a = _mm256_packus_epi32(avx2_sum16x4(p, qv), avx2_sum16x4(p + 64, qv));
        __m256i b = _mm256_packus_epi32(avx2_sum16x4(p + 128, qv), avx2_sum16x4(p + 192, qv));
        __m256i v = _mm256_packus_epi32(a, b); /* lane 0: even rows, lane 1: odd rows */
        vmin = _mm256_min_epu16(vmin, v);
        __m128i even = _mm256_castsi256_si128(v), odd = _mm256_extracti128_si256(v, 1);
        _mm_storeu_si128((__m128i *)(out + r), _mm_unpacklo_epi16(even, odd));
        _mm_storeu_si128((__m128i *)(out + r + 8), _mm_unpackhi_epi16(even, odd));
    }
    unsigned mn = hmin_u16x8(_mm_min_epu16(_mm256_castsi256_si128(vmin), _mm256_extracti128_si256(vmin, 1)));
    if (r < nrows) {
        unsigned m2 = avx2_rows_any(q, rows + r * 16, nrows - r, 16, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

/* 32- and 64-byte codes: 8 rows per step, 4 partial sums per row reduced together. */
T_AVX2 static inline __m256i avx2_row_parts(const uint8_t *p, __m256i qa, __m256i qb, int wide) {
    __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), qa);
    __m256i c = avx2_popcnt_bytes(x);
    if (wide) {
        __m256i y = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32)), qb);
        c = _mm256_add_epi8(c, avx2_popcnt_bytes(y)); /* <= 16 per byte */
    }
    return _mm256_sad_epu8(c, _mm256_setzero_si256());
}

T_AVX2 static inline __m128i avx2_sum_parts4(__m256i v) {
    /* v: qword j = (row0_j, row1_j, row2_j, row3_j) partials -> words 0..3 = row sums */
    __m128i x = _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return x; /* two qwords still to add */
}

T_AVX2 static unsigned avx2_rows32x(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                    uint16_t *out, size_t nbytes) {
    const int wide = nbytes == 64;
    const __m256i qa = _mm256_loadu_si256((const __m256i *)q);
    const __m256i qb = wide ? _mm256_loadu_si256((const __m256i *)(q + 32)) : qa;
    __m128i vmin = _mm_set1_epi16(-1);
    size_t r = 0;
    for (; r + 8 <= nrows; r += 8) {
        const uint8_t *p = rows + r * nbytes;
        __m256i s[8];
        for (int m = 0; m < 8; m++) s[m] = avx2_row_parts(p + m * nbytes, qa, qb, wide);
        __m128i x0 = avx2_sum_parts4(avx2_pack4(s[0], s[1], s[2], s[3]));
        __m128i x1 = avx2_sum_parts4(avx2_pack4(s[4], s[5], s[6], s[7]));
        __m128i w = _mm_add_epi16(_mm_unpacklo_epi64(x0, x1), _mm_unpackhi_epi64(x0, x1));
        vmin = _mm_min_epu16(vmin, w);
        _mm_storeu_si128((__m128i *)(out + r), w);
    }
    unsigned mn = hmin_u16x8(vmin);
    if (r < nrows) {
        unsigned m2 = avx2_rows_any(q, rows + r * nbytes, nrows - r, nbytes, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

T_AVX2 static unsigned dist_block_avx2(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                       size_t nbytes, uint16_t *out) {
    switch (nbytes) {
    case 8: return avx2_rows8(q, rows, nrows, out);
    case 16: return avx2_rows16(q, rows, nrows, out);
    case 32:
    case 64: return avx2_rows32x(q, rows, nrows, out, nbytes);
    default: return avx2_rows_any(q, rows, nrows, nbytes, out);
    }
}

/* AVX-512 VPOPCNTDQ: a popcount per 64-bit lane in one instruction. */

/* Any width, one row at a time: 64-byte chunks, the last one masked. */
T_AVX512 static unsigned avx512_rows_any(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                         size_t nbytes, uint16_t *out) {
    unsigned mn = 0xffff;
    size_t chunks = nbytes / 64, rest = nbytes % 64;
    const __mmask64 tmask = rest ? (~0ULL >> (64 - rest)) : 0;
    const __m512i qt = _mm512_maskz_loadu_epi8(tmask, q + 64 * chunks);
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *row = rows + r * nbytes;
        __m512i acc = _mm512_setzero_si512();
        for (size_t c = 0; c < chunks; c++) {
            __m512i x = _mm512_xor_si512(_mm512_loadu_si512(row + 64 * c), _mm512_loadu_si512(q + 64 * c));
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
        }
        if (rest) {
            /* masked load: never touches bytes past the row, nor past the array */
            __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi8(tmask, row + 64 * chunks), qt);
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
        }
        unsigned d = (unsigned)_mm512_reduce_add_epi64(acc);
        out[r] = (uint16_t)d;
        if (d < mn) mn = d;
    }
    return mn;
}

/* 8-byte codes: 8 rows per vector, 16 per step. */
T_AVX512 static unsigned avx512_rows8(const uint8_t *q, const uint8_t *rows, size_t nrows, uint16_t *out) {
    const __m512i qv = _mm512_set1_epi64((long long)load64(q));
    __m128i vmin = _mm_set1_epi16(-1);
    size_t r = 0;
    for (; r + 16 <= nrows; r += 16) {
        const uint8_t *p = rows + r * 8;
        __m128i a = _mm512_cvtepi64_epi16(_mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p), qv)));
        __m128i b = _mm512_cvtepi64_epi16(_mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 64), qv)));
        vmin = _mm_min_epu16(vmin, _mm_min_epu16(a, b));
        _mm_storeu_si128((__m128i *)(out + r), a);
        _mm_storeu_si128((__m128i *)(out + r + 8), b);
    }
    unsigned mn = hmin_u16x8(vmin);
    if (r < nrows) {
        unsigned m2 = avx512_rows_any(q, rows + r * 8, nrows - r, 8, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

/* 16-byte codes: 4 rows per vector, 8 per step. */
T_AVX512 static unsigned avx512_rows16(const uint8_t *q, const uint8_t *rows, size_t nrows, uint16_t *out) {
    const __m512i qv = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q));
    /* after the unpacks, qwords hold rows 0,4,1,5,2,6,3,7 */
    const __m128i order = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    __m128i vmin = _mm_set1_epi16(-1);
    size_t r = 0;
    for (; r + 8 <= nrows; r += 8) {
        const uint8_t *p = rows + r * 16;
        __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p), qv));
        __m512i b = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 64), qv));
        __m512i s = _mm512_add_epi64(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        __m128i w = _mm_shuffle_epi8(_mm512_cvtepi64_epi16(s), order);
        vmin = _mm_min_epu16(vmin, w);
        _mm_storeu_si128((__m128i *)(out + r), w);
    }
    unsigned mn = hmin_u16x8(vmin);
    if (r < nrows) {
        unsigned m2 = avx512_rows_any(q, rows + r * 16, nrows - r, 16, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

/* 32-byte codes: one row per 256-bit vector (AVX512VL popcount), 8 rows per step. */
T_AVX512 static unsigned avx512_rows32(const uint8_t *q, const uint8_t *rows, size_t nrows, uint16_t *out) {
    const __m256i qv = _mm256_loadu_si256((const __m256i *)q);
    __m128i vmin = _mm_set1_epi16(-1);
    size_t r = 0;
    for (; r + 8 <= nrows; r += 8) {
        const uint8_t *p = rows + r * 32;
        __m256i s[8];
        for (int m = 0; m < 8; m++)
            s[m] = _mm256_popcnt_epi64(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32 * m)), qv));
        __m128i x0 = avx2_sum_parts4(avx2_pack4(s[0], s[1], s[2], s[3]));
        __m128i x1 = avx2_sum_parts4(avx2_pack4(s[4], s[5], s[6], s[7]));
        __m128i w = _mm_add_epi16(_mm_unpacklo_epi64(x0, x1), _mm_unpackhi_epi64(x0, x1));
        vmin = _mm_min_epu16(vmin, w);
        _mm_storeu_si128((__m128i *)(out + r), w);
    }
    unsigned mn = hmin_u16x8(vmin);
    if (r < nrows) {
        unsigned m2 = avx512_rows_any(q, rows + r * 32, nrows - r, 32, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

/* Marking kernels, for the one-query scan (scan_rows): rows whose distance is below
 * `limit` get their bit set in bits[] (row r of the span: bit r % 64 of word r / 64)
 * and their distance stored in d[r]; other rows are not stored at all. Returns the
 * number of marked rows. Once the top-k threshold has settled almost no row is
 * marked, so one pass of load, xor, VPOPCNTQ and compare is the whole search. */
T_AVX512 static size_t avx512_mark8(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                    unsigned limit, uint16_t *d, uint64_t *bits) {
    const __m512i qv = _mm512_set1_epi64((long long)load64(q));
    const __m512i lim = _mm512_set1_epi64((long long)limit);
    size_t marked = 0;
    for (size_t w = 0; w * 64 < nrows; w++) bits[w] = 0;
    size_t r = 0;
    for (; r + 32 <= nrows; r += 32) {
        const uint8_t *p = rows + r * 8;
        __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p), qv));
        __m512i b = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 64), qv));
        __m512i c = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 128), qv));
        __m512i e = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 192), qv));
        uint32_t m = (uint32_t)_mm512_cmplt_epu64_mask(a, lim) |
                     (uint32_t)_mm512_cmplt_epu64_mask(b, lim) << 8 |
                     (uint32_t)_mm512_cmplt_epu64_mask(c, lim) << 16 |
                     (uint32_t)_mm512_cmplt_epu64_mask(e, lim) << 24;
        if (m) {
            _mm_storeu_si128((__m128i *)(d + r), _mm512_cvtepi64_epi16(a));
            _mm_storeu_si128((__m128i *)(d + r + 8), _mm512_cvtepi64_epi16(b));
            _mm_storeu_si128((__m128i *)(d + r + 16), _mm512_cvtepi64_epi16(c));
            _mm_storeu_si128((__m128i *)(d + r + 24), _mm512_cvtepi64_epi16(e));
            bits[r / 64] |= (uint64_t)m << (r % 64);
            marked += (size_t)__builtin_popcount(m);
        }
    }
    for (; r < nrows; r += 8) {
        /* masked load: never reads past the last row */
        size_t left = nrows - r < 8 ? nrows - r : 8;
        __mmask8 valid = (__mmask8)((1u << left) - 1);
        __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(valid, rows + r * 8), qv));
        __mmask8 m = _mm512_mask_cmplt_epu64_mask(valid, a, lim);
        if (m) {
            _mm512_mask_cvtepi64_storeu_epi16(d + r, m, a);
            bits[r / 64] |= (uint64_t)m << (r % 64);
            marked += (size_t)__builtin_popcount(m);
        }
    }
    return marked;
}

/* 16-byte codes: low and high halves of 8 rows gathered into two vectors. */
T_AVX512 static size_t avx512_mark16(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                     unsigned limit, uint16_t *d, uint64_t *bits) {
    const __m512i qlo = _mm512_set1_epi64((long long)load64(q));
    const __m512i qhi = _mm512_set1_epi64((long long)load64(q + 8));
    const __m512i lim = _mm512_set1_epi64((long long)limit);
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    size_t marked = 0;
    for (size_t w = 0; w * 64 < nrows; w++) bits[w] = 0;
    size_t r = 0;
    for (; r + 8 <= nrows; r += 8) {
        const uint8_t *p = rows + r * 16;
        __m512i x = _mm512_loadu_si512(p), y = _mm512_loadu_si512(p + 64);
        __m512i lo = _mm512_xor_si512(_mm512_permutex2var_epi64(x, even, y), qlo);
        __m512i hi = _mm512_xor_si512(_mm512_permutex2var_epi64(x, odd, y), qhi);
        __m512i s = _mm512_add_epi64(_mm512_popcnt_epi64(lo), _mm512_popcnt_epi64(hi));
        __mmask8 m = _mm512_cmplt_epu64_mask(s, lim);
        if (m) {
            _mm_storeu_si128((__m128i *)(d + r), _mm512_cvtepi64_epi16(s));
            bits[r / 64] |= (uint64_t)m << (r % 64);
            marked += (size_t)__builtin_popcount(m);
        }
    }
    if (r < nrows) {
        uint16_t tmp[8];
        avx512_rows_any(q, rows + r * 16, nrows - r, 16, tmp);
        for (size_t i = 0; r + i < nrows; i++) {
            if (tmp[i] < limit) {
                d[r + i] = tmp[i];
                bits[(r + i) / 64] |= (uint64_t)1 << ((r + i) % 64);
                marked++;
            }
        }
    }
    return marked;
}

/* The marking kernel of `isa` for `nbytes`-byte codes, or NULL (then scan_rows
 * uses the distance kernel and its block minimum alone). */
static mark_block_fn simd_mark_kernel(int isa, size_t nbytes) {
    if (isa != CVH_ISA_AVX512) return NULL;
    if (nbytes == 8) return avx512_mark8;
    if (nbytes == 16) return avx512_mark16;
    return NULL;
}

T_AVX512 static unsigned dist_block_avx512(const uint8_t *q, const uint8_t *rows, size_t nrows,
                                           size_t nbytes, uint16_t *out) {
    switch (nbytes) {
    case 8: return avx512_rows8(q, rows, nrows, out);
    case 16: return avx512_rows16(q, rows, nrows, out);
    case 32: return avx512_rows32(q, rows, nrows, out);
    default: return avx512_rows_any(q, rows, nrows, nbytes, out);
    }
}

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void simd_register(dist_block_fn *table, int *ok) {
    unsigned a, b, c, d;
    table[CVH_ISA_AVX2] = dist_block_avx2;
    table[CVH_ISA_AVX512] = dist_block_avx512;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1, popcnt = (c >> 23) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx || !popcnt) return;
    /* The CPU may have the registers while the OS does not save them: check XCR0. */
    uint64_t xcr0 = xgetbv0();
    int ymm_os = (xcr0 & 0x6) == 0x6;          /* SSE + AVX state */
    int zmm_os = (xcr0 & 0xe6) == 0xe6;        /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    int avx2 = (b >> 5) & 1;
    int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    int vpopcntdq = (c >> 14) & 1;
    ok[CVH_ISA_AVX2] = ymm_os && avx2;
    ok[CVH_ISA_AVX512] = ok[CVH_ISA_AVX2] && zmm_os && avx512f && avx512bw && avx512vl && vpopcntdq;
}

/* ============================================================= aarch64 */
#elif defined(CVH_ARM)

/* Any width, one row at a time: 16-byte chunks widened into u16 lanes. */
static unsigned neon_rows_any(const uint8_t *q, const uint8_t *rows, size_t nrows, size_t nbytes,
                              uint16_t *out) {
    unsigned mn = 0xffff;
    size_t chunks = nbytes / 16, rest = nbytes % 16, words = rest / 8, tail = rest % 8;
    const uint8_t *qr = q + 16 * chunks;
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *row = rows + r * nbytes;
        uint16x8_t acc = vdupq_n_u16(0); /* <= 16 per chunk per lane, <= 64 chunks */
        for (size_t c = 0; c < chunks; c++)
            acc = vpadalq_u8(acc, vcntq_u8(veorq_u8(vld1q_u8(row + 16 * c), vld1q_u8(q + 16 * c))));
        unsigned d = vaddvq_u16(acc);
        const uint8_t *rr = row + 16 * chunks;
        for (size_t w = 0; w < words; w++)
            d += (unsigned)__builtin_popcountll(load64(qr + 8 * w) ^ load64(rr + 8 * w));
        if (tail)
            d += (unsigned)__builtin_popcountll(load_tail(qr + 8 * words, tail) ^ load_tail(rr + 8 * words, tail));
        out[r] = (uint16_t)d;
        if (d < mn) mn = d;
    }
    return mn;
}

/* Per-byte popcounts of 8 rows (row m's bytes summed into c[m], 16 lanes, each
 * <= 32 for widths up to 32 bytes) -> the 8 row sums as u16, by pairwise adds. */
static inline uint16x8_t neon_reduce8(const uint8x16_t c[8]) {
    uint8x16_t a0 = vpaddq_u8(c[0], c[1]), a1 = vpaddq_u8(c[2], c[3]);
    uint8x16_t a2 = vpaddq_u8(c[4], c[5]), a3 = vpaddq_u8(c[6], c[7]);
    uint8x16_t b0 = vpaddq_u8(a0, a1), b1 = vpaddq_u8(a2, a3); /* 4 lanes per row */
    /* widen before the last add: 64-byte rows reach 256 */
    return vpaddq_u16(vpaddlq_u8(b0), vpaddlq_u8(b1));
}

/* 8-byte codes: 2 rows per vector, 8 rows per step. */
static unsigned neon_rows8(const uint8_t *q, const uint8_t *rows, size_t nrows, uint16_t *out) {
    const uint8x16_t qv = vcombine_u8(vld1_u8(q), vld1_u8(q));
    uint16x8_t vmin = vdupq_n_u16(0xffff);
    size_t r = 0;
    for (; r + 8 <= nrows; r += 8) {
        const uint8_t *p = rows + r * 8;
        uint8x16_t c0 = vcntq_u8(veorq_u8(vld1q_u8(p), qv));
        uint8x16_t c1 = vcntq_u8(veorq_u8(vld1q_u8(p + 16), qv));
        uint8x16_t c2 = vcntq_u8(veorq_u8(vld1q_u8(p + 32), qv));
        uint8x16_t c3 = vcntq_u8(veorq_u8(vld1q_u8(p + 48), qv));
        uint8x16_t a0 = vpaddq_u8(c0, c1), a1 = vpaddq_u8(c2, c3); /* 4 lanes per row */
        uint16x8_t w = vpaddlq_u8(vpaddq_u8(a0, a1));               /* rows 0..7 */
        vmin = vminq_u16(vmin, w);
        vst1q_u16(out + r, w);
    }
    unsigned mn = vminvq_u16(vmin);
    if (r < nrows) {
        unsigned m2 = neon_rows_any(q, rows + r * 8, nrows - r, 8, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

/* 16/32/64-byte codes: one row's byte counts folded into one vector, 8 rows per step. */
static unsigned neon_rows16x(const uint8_t *q, const uint8_t *rows, size_t nrows, uint16_t *out,
                             size_t nbytes) {
    const size_t parts = nbytes / 16;
    uint8x16_t qv[4];
    for (size_t i = 0; i < parts; i++) qv[i] = vld1q_u8(q + 16 * i);
    uint16x8_t vmin = vdupq_n_u16(0xffff);
    size_t r = 0;
    for (; r + 8 <= nrows; r += 8) {
        uint8x16_t c[8];
        for (int m = 0; m < 8; m++) {
            const uint8_t *p = rows + (r + m) * nbytes;
            uint8x16_t acc = vcntq_u8(veorq_u8(vld1q_u8(p), qv[0]));
            for (size_t i = 1; i < parts; i++) acc = vaddq_u8(acc, vcntq_u8(veorq_u8(vld1q_u8(p + 16 * i), qv[i])));
            c[m] = acc; /* <= 32 per lane */
        }
        uint16x8_t w = neon_reduce8(c);
        vmin = vminq_u16(vmin, w);
        vst1q_u16(out + r, w);
    }
    unsigned mn = vminvq_u16(vmin);
    if (r < nrows) {
        unsigned m2 = neon_rows_any(q, rows + r * nbytes, nrows - r, nbytes, out + r);
        if (m2 < mn) mn = m2;
    }
    return mn;
}

static unsigned dist_block_neon(const uint8_t *q, const uint8_t *rows, size_t nrows, size_t nbytes,
                                uint16_t *out) {
    switch (nbytes) {
    case 8: return neon_rows8(q, rows, nrows, out);
    case 16:
    case 32:
    case 64: return neon_rows16x(q, rows, nrows, out, nbytes);
    default: return neon_rows_any(q, rows, nrows, nbytes, out);
    }
}

static mark_block_fn simd_mark_kernel(int isa, size_t nbytes) {
    (void)isa;
    (void)nbytes;
    return NULL;
}

static void simd_register(dist_block_fn *table, int *ok) {
    table[CVH_ISA_NEON] = dist_block_neon;
#if defined(__linux__) && defined(HWCAP_ASIMD)
    ok[CVH_ISA_NEON] = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
    ok[CVH_ISA_NEON] = 1; /* Advanced SIMD is mandatory in AArch64 */
#endif
}

/* ========================================================== elsewhere */
#else
static mark_block_fn simd_mark_kernel(int isa, size_t nbytes) {
    (void)isa;
    (void)nbytes;
    return NULL;
}

static void simd_register(dist_block_fn *table, int *ok) {
    (void)table;
    (void)ok;
}
#endif

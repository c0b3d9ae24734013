// AVX-512F kernel: 16 floats a vector. Compiled with -mavx512f -mfma -mf16c alone; uses
// no instruction outside AVX-512F (no DQ, BW or VL), so every AVX-512 CPU can run it.
#include <immintrin.h>

#include <cstring>

#include "rotate.h"

namespace pyntk {

namespace {

// pi/2 as the sum of two doubles: theta - k*pi/2 computed with two FMAs stays exact to
// ~1e-16 for any k, so the angle of a large position is as good as the double theta itself.
constexpr double kTwoOverPi = 0.63661977236758134308;
constexpr double kPiOver2Hi = 1.5707963267948966192;
constexpr double kPiOver2Lo = 6.1232339957367660e-17;

// Asks for the source line 8 KiB ahead, into L2 only: one core alone keeps too few cache
// misses in flight to reach DRAM bandwidth, and an L1 prefetch holds one of the few L1
// miss buffers that the streamed stores need too (on a Xeon with AVX-512: 1 KiB into L1
// ~0.75 of a copy, 8 KiB into L2 ~0.9). A prefetch never faults, so running past the
// array's end is harmless.
void prefetch_ahead(const void* p) {
    _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + 8192),
                 _MM_HINT_T2);
}

// Taylor series of sin and cos on |r| <= pi/4: the first omitted terms, r^11/11! and
// r^12/12!, are below 2e-9, far under float rounding.
constexpr float kS1 = -1.0f / 6, kS2 = 1.0f / 120, kS3 = -1.0f / 5040, kS4 = 1.0f / 362880;
constexpr float kC1 = -1.0f / 2, kC2 = 1.0f / 24, kC3 = -1.0f / 720, kC4 = 1.0f / 40320,
                kC5 = -1.0f / 3628800;

// Reduces 8 double angles to r in [-pi/4, pi/4] (as float) and the quadrant k mod 4.
void reduce8(__m512d theta, __m256* r, __m256i* quadrant) {
    const __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(theta, _mm512_set1_pd(kTwoOverPi)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d rest = _mm512_fnmadd_pd(k, _mm512_set1_pd(kPiOver2Hi), theta);
    rest = _mm512_fnmadd_pd(k, _mm512_set1_pd(kPiOver2Lo), rest);
    // k mod 4 in double, because k itself may not fit an int32.
    const __m512d floor_quarter = _mm512_roundscale_pd(_mm512_mul_pd(k, _mm512_set1_pd(0.25)),
                                                       _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512d q = _mm512_fnmadd_pd(floor_quarter, _mm512_set1_pd(4.0), k);
    *r = _mm512_cvtpd_ps(rest);
    *quadrant = _mm512_cvtpd_epi32(q);
}

// cos and sin of theta_lo (lanes 0-7) and theta_hi (lanes 8-15), times attn.
void sincos16(__m512d theta_lo, __m512d theta_hi, __m512 attn, __m512* cos, __m512* sin) {
    __m256 r_lo, r_hi;
    __m256i q_lo, q_hi;
    reduce8(theta_lo, &r_lo, &q_lo);
    reduce8(theta_hi, &r_hi, &q_hi);
    // Joined through 64-bit lanes: the 32-bit-lane inserts are AVX512DQ.
    const __m512 r = _mm512_castpd_ps(_mm512_insertf64x4(
        _mm512_castps_pd(_mm512_castps256_ps512(r_lo)), _mm256_castps_pd(r_hi), 1));
    const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q_lo), q_hi, 1);
    const __m512 r2 = _mm512_mul_ps(r, r);

    __m512 sp = _mm512_fmadd_ps(_mm512_set1_ps(kS4), r2, _mm512_set1_ps(kS3));
    sp = _mm512_fmadd_ps(sp, r2, _mm512_set1_ps(kS2));
    sp = _mm512_fmadd_ps(sp, r2, _mm512_set1_ps(kS1));
    const __m512 sin_r = _mm512_fmadd_ps(_mm512_mul_ps(sp, r2), r, r);
    __m512 cp = _mm512_fmadd_ps(_mm512_set1_ps(kC5), r2, _mm512_set1_ps(kC4));
    cp = _mm512_fmadd_ps(cp, r2, _mm512_set1_ps(kC3));
    cp = _mm512_fmadd_ps(cp, r2, _mm512_set1_ps(kC2));
    cp = _mm512_fmadd_ps(cp, r2, _mm512_set1_ps(kC1));
    const __m512 cos_r = _mm512_fmadd_ps(cp, r2, _mm512_set1_ps(1.0f));

    // theta = r + q*pi/2: odd quadrants swap sin and cos; sin is negated in quadrants 2
    // and 3, cos in 1 and 2, i.e. when bit 1 of q (sin) or of q + 1 (cos) is set.
    const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2);
    const __mmask16 swap = _mm512_test_epi32_mask(q, one);
    const __m512i sin_sign = _mm512_slli_epi32(_mm512_and_si512(q, two), 30);
    const __m512i cos_sign = _mm512_slli_epi32(_mm512_and_si512(_mm512_add_epi32(q, one), two), 30);
    // Sign flips by integer xor: the float xor is AVX512DQ.
    const __m512i s = _mm512_castps_si512(_mm512_mask_blend_ps(swap, sin_r, cos_r));
    const __m512i c = _mm512_castps_si512(_mm512_mask_blend_ps(swap, cos_r, sin_r));
    *sin = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_xor_si512(s, sin_sign)), attn);
    *cos = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_xor_si512(c, cos_sign)), attn);
}

// Negates lanes 0, 2, 4, ...: the low 32 bits of each 64-bit lane.
__m512 negate_even(__m512 v) {
    return _mm512_castsi512_ps(
        _mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi64(0x80000000)));
}

// Stores the 16 values of c and s at i, or at 2 * i as NORMAL mode's pairs: cos (c, c),
// sin (-s, s).
template <bool Pairs>
void put(float* cos, float* sin, int64_t i, __m512 c, __m512 s) {
    if (!Pairs) {
        _mm512_storeu_ps(cos + i, c);
        _mm512_storeu_ps(sin + i, s);
        return;
    }
    const __m512i lo = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    _mm512_storeu_ps(cos + 2 * i, _mm512_permutexvar_ps(lo, c));
    _mm512_storeu_ps(cos + 2 * i + 16, _mm512_permutexvar_ps(hi, c));
    _mm512_storeu_ps(sin + 2 * i, negate_even(_mm512_permutexvar_ps(lo, s)));
    _mm512_storeu_ps(sin + 2 * i + 16, negate_even(_mm512_permutexvar_ps(hi, s)));
}

template <bool Pairs>
void tables(const double* inv, int64_t half, double pos, float attn, float* cos, float* sin) {
    const __m512d p = _mm512_set1_pd(pos);
    const __m512 a = _mm512_set1_ps(attn);
    __m512 c, s;
    int64_t i = 0;
    for (; i + 16 <= half; i += 16) {
        sincos16(_mm512_mul_pd(p, _mm512_loadu_pd(inv + i)),
                 _mm512_mul_pd(p, _mm512_loadu_pd(inv + i + 8)), a, &c, &s);
        put<Pairs>(cos, sin, i, c, s);
    }
    if (i < half) {
        const size_t n = size_t(half - i);
        double in[16] = {};
        float c_out[2 * 16], s_out[2 * 16];
        std::memcpy(in, inv + i, n * sizeof(double));
        sincos16(_mm512_mul_pd(p, _mm512_loadu_pd(in)), _mm512_mul_pd(p, _mm512_loadu_pd(in + 8)),
                 a, &c, &s);
        put<Pairs>(c_out, s_out, 0, c, s);
        const int64_t at = Pairs ? 2 * i : i, floats = Pairs ? 2 * int64_t(n) : int64_t(n);
        std::memcpy(cos + at, c_out, size_t(floats) * sizeof(float));
        std::memcpy(sin + at, s_out, size_t(floats) * sizeof(float));
    }
}

// Element types; Stream writes with 16-byte non-temporal stores, so that a row needs only
// the 16-byte alignment that malloc gives.
template <bool Stream>
struct F32 {
    using T = float;
    using Cached = F32<false>;
    static constexpr bool kStream = Stream;
    static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, __m512 v) {
        if (Stream) {
            _mm_stream_ps(p, _mm512_extractf32x4_ps(v, 0));
            _mm_stream_ps(p + 4, _mm512_extractf32x4_ps(v, 1));
            _mm_stream_ps(p + 8, _mm512_extractf32x4_ps(v, 2));
            _mm_stream_ps(p + 12, _mm512_extractf32x4_ps(v, 3));
        } else {
            _mm512_storeu_ps(p, v);
        }
    }
};

template <bool Stream>
struct F16 {
    using T = uint16_t;
    using Cached = F16<false>;
    static constexpr bool kStream = Stream;
    static __m512 load(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static void store(uint16_t* p, __m512 v) {
        const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (Stream) {
            _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(h));
            _mm_stream_si128(reinterpret_cast<__m128i*>(p + 8), _mm256_extracti128_si256(h, 1));
        } else {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
        }
    }
};

// 16 pairs (x[j], x[j + offset]); Parts says which rotated halves to write.
enum Parts { kFirst = 1, kSecond = 2, kBoth = 3 };

template <typename E, int P = kBoth>
void neox16(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
            int64_t offset) {
    const __m512 x0 = E::load(src), x1 = E::load(src + offset);
    const __m512 c = _mm512_loadu_ps(cos), s = _mm512_loadu_ps(sin);
    if (P & kFirst) E::store(dst, _mm512_fmsub_ps(x0, c, _mm512_mul_ps(x1, s)));
    if (P & kSecond) E::store(dst + offset, _mm512_fmadd_ps(x0, s, _mm512_mul_ps(x1, c)));
}

template <typename E>
void neox(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
          int64_t half) {
    using T = typename E::T;
    int64_t i = 0;
    if (E::kStream) {
        // In address order, one half after the other (the second pass reads the source
        // from L1), like a copy: interleaving the halves leaves lines of a row that is not
        // 64-byte aligned partly written while stores go elsewhere, and the early flushes
        // of those write-combining buffers took one thread from 0.9 to 0.65 of a copy.
        for (; i + 16 <= half; i += 16) {
            prefetch_ahead(src + i);
            prefetch_ahead(src + half + i);
            neox16<E, kFirst>(src + i, dst + i, cos + i, sin + i, half);
        }
        for (int64_t j = 0; j < i; j += 16)
            neox16<E, kSecond>(src + j, dst + j, cos + j, sin + j, half);
    } else {
        for (; i + 16 <= half; i += 16) {
            prefetch_ahead(src + i);
            prefetch_ahead(src + half + i);
            neox16<E>(src + i, dst + i, cos + i, sin + i, half);
        }
    }
    if (i < half) {  // the last pairs go through a zero-padded buffer, both halves side by side
        const size_t n = size_t(half - i);
        T x[32] = {};
        float c[16] = {}, s[16] = {};
        std::memcpy(x, src + i, n * sizeof(T));
        std::memcpy(x + 16, src + half + i, n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        neox16<typename E::Cached>(x, x, c, s, 16);
        std::memcpy(dst + i, x, n * sizeof(T));
        std::memcpy(dst + half + i, x + 16, n * sizeof(T));
    }
}

// 8 adjacent pairs with the interleaved tables: x*cos + swap_pairs(x)*sin.
template <typename E>
void normal16(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin) {
    const __m512 x = E::load(src);
    const __m512 swapped = _mm512_permute_ps(x, 0xb1);
    E::store(dst, _mm512_fmadd_ps(x, _mm512_loadu_ps(cos),
                                  _mm512_mul_ps(swapped, _mm512_loadu_ps(sin))));
}

template <typename E>
void normal(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
            int64_t half) {
    using T = typename E::T;
    const int64_t n_rot = 2 * half;
    int64_t i = 0;
    for (; i + 16 <= n_rot; i += 16) {
        prefetch_ahead(src + i);
        normal16<E>(src + i, dst + i, cos + i, sin + i);
    }
    if (i < n_rot) {
        const size_t n = size_t(n_rot - i);
        T x[16] = {};
        float c[16] = {}, s[16] = {};
        std::memcpy(x, src + i, n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        normal16<typename E::Cached>(x, x, c, s);
        std::memcpy(dst + i, x, n * sizeof(T));
    }
}

// Streams only when every vector store of the row lands on a 16-byte boundary.
template <template <bool> class E>
void neox_row(const typename E<false>::T* src, typename E<false>::T* dst, const float* cos,
              const float* sin, int64_t half, bool stream) {
    const bool aligned = reinterpret_cast<uintptr_t>(dst) % 16 == 0 &&
                         half * int64_t(sizeof(*dst)) % 16 == 0;
    if (stream && aligned)
        neox<E<true>>(src, dst, cos, sin, half);
    else
        neox<E<false>>(src, dst, cos, sin, half);
}

template <template <bool> class E>
void normal_row(const typename E<false>::T* src, typename E<false>::T* dst, const float* cos,
                const float* sin, int64_t half, bool stream) {
    if (stream && reinterpret_cast<uintptr_t>(dst) % 16 == 0)
        normal<E<true>>(src, dst, cos, sin, half);
    else
        normal<E<false>>(src, dst, cos, sin, half);
}

void fence() { _mm_sfence(); }

}  // namespace

extern const Kernel kAvx512Kernel = {
    "avx512", tables<false>, tables<true>, neox_row<F32>, normal_row<F32>, neox_row<F16>,
    normal_row<F16>, fence,
};

}  // namespace pyntk

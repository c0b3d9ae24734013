// AVX2 + FMA + F16C kernel: 8 floats a vector. Compiled with -mavx2 -mfma -mf16c alone.
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

// Reduces 4 double angles to r in [-pi/4, pi/4] (as float) and the quadrant k mod 4.
void reduce4(__m256d theta, __m128* r, __m128i* quadrant) {
    const __m256d k = _mm256_round_pd(_mm256_mul_pd(theta, _mm256_set1_pd(kTwoOverPi)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d rest = _mm256_fnmadd_pd(k, _mm256_set1_pd(kPiOver2Hi), theta);
    rest = _mm256_fnmadd_pd(k, _mm256_set1_pd(kPiOver2Lo), rest);
    // k mod 4 in double, because k itself may not fit an int32.
    const __m256d q = _mm256_fnmadd_pd(
        _mm256_floor_pd(_mm256_mul_pd(k, _mm256_set1_pd(0.25))), _mm256_set1_pd(4.0), k);
    *r = _mm256_cvtpd_ps(rest);
    *quadrant = _mm256_cvtpd_epi32(q);
}

// cos and sin of theta_lo (lanes 0-3) and theta_hi (lanes 4-7), times attn.
void sincos8(__m256d theta_lo, __m256d theta_hi, __m256 attn, __m256* cos, __m256* sin) {
    __m128 r_lo, r_hi;
    __m128i q_lo, q_hi;
    reduce4(theta_lo, &r_lo, &q_lo);
    reduce4(theta_hi, &r_hi, &q_hi);
    const __m256 r = _mm256_insertf128_ps(_mm256_castps128_ps256(r_lo), r_hi, 1);
    const __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(q_lo), q_hi, 1);
    const __m256 r2 = _mm256_mul_ps(r, r);

    __m256 sp = _mm256_fmadd_ps(_mm256_set1_ps(kS4), r2, _mm256_set1_ps(kS3));
    sp = _mm256_fmadd_ps(sp, r2, _mm256_set1_ps(kS2));
    sp = _mm256_fmadd_ps(sp, r2, _mm256_set1_ps(kS1));
    const __m256 sin_r = _mm256_fmadd_ps(_mm256_mul_ps(sp, r2), r, r);
    __m256 cp = _mm256_fmadd_ps(_mm256_set1_ps(kC5), r2, _mm256_set1_ps(kC4));
    cp = _mm256_fmadd_ps(cp, r2, _mm256_set1_ps(kC3));
    cp = _mm256_fmadd_ps(cp, r2, _mm256_set1_ps(kC2));
    cp = _mm256_fmadd_ps(cp, r2, _mm256_set1_ps(kC1));
    const __m256 cos_r = _mm256_fmadd_ps(cp, r2, _mm256_set1_ps(1.0f));

    // theta = r + q*pi/2: odd quadrants swap sin and cos; sin is negated in quadrants 2
    // and 3, cos in 1 and 2, i.e. when bit 1 of q (sin) or of q + 1 (cos) is set.
    const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
    const __m256 swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(q, one), one));
    const __m256 sin_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(q, two), 30));
    const __m256 cos_sign = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(q, one), two), 30));
    *sin = _mm256_mul_ps(_mm256_xor_ps(_mm256_blendv_ps(sin_r, cos_r, swap), sin_sign), attn);
    *cos = _mm256_mul_ps(_mm256_xor_ps(_mm256_blendv_ps(cos_r, sin_r, swap), cos_sign), attn);
}

// Stores the 8 values of c and s at i, or at 2 * i as NORMAL mode's pairs: cos (c, c),
// sin (-s, s).
template <bool Pairs>
void put(float* cos, float* sin, int64_t i, __m256 c, __m256 s) {
    if (!Pairs) {
        _mm256_storeu_ps(cos + i, c);
        _mm256_storeu_ps(sin + i, s);
        return;
    }
    const __m256 even_sign = _mm256_castsi256_ps(_mm256_set1_epi64x(0x80000000));
    // unpack pairs up values within each 128-bit half: (0 0 1 1 | 4 4 5 5), (2 2 3 3 | 6 6 7 7)
    const __m256 c_lo = _mm256_unpacklo_ps(c, c), c_hi = _mm256_unpackhi_ps(c, c);
    const __m256 s_lo = _mm256_xor_ps(_mm256_unpacklo_ps(s, s), even_sign);
    const __m256 s_hi = _mm256_xor_ps(_mm256_unpackhi_ps(s, s), even_sign);
    _mm256_storeu_ps(cos + 2 * i, _mm256_permute2f128_ps(c_lo, c_hi, 0x20));
    _mm256_storeu_ps(cos + 2 * i + 8, _mm256_permute2f128_ps(c_lo, c_hi, 0x31));
    _mm256_storeu_ps(sin + 2 * i, _mm256_permute2f128_ps(s_lo, s_hi, 0x20));
    _mm256_storeu_ps(sin + 2 * i + 8, _mm256_permute2f128_ps(s_lo, s_hi, 0x31));
}

template <bool Pairs>
void tables(const double* inv, int64_t half, double pos, float attn, float* cos, float* sin) {
    const __m256d p = _mm256_set1_pd(pos);
    const __m256 a = _mm256_set1_ps(attn);
    __m256 c, s;
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) {
        sincos8(_mm256_mul_pd(p, _mm256_loadu_pd(inv + i)),
                _mm256_mul_pd(p, _mm256_loadu_pd(inv + i + 4)), a, &c, &s);
        put<Pairs>(cos, sin, i, c, s);
    }
    if (i < half) {
        const size_t n = size_t(half - i);
        double in[8] = {};
        float c_out[2 * 8], s_out[2 * 8];
        std::memcpy(in, inv + i, n * sizeof(double));
        sincos8(_mm256_mul_pd(p, _mm256_loadu_pd(in)), _mm256_mul_pd(p, _mm256_loadu_pd(in + 4)),
                a, &c, &s);
        put<Pairs>(c_out, s_out, 0, c, s);
        const int64_t at = Pairs ? 2 * i : i, floats = Pairs ? 2 * int64_t(n) : int64_t(n);
        std::memcpy(cos + at, c_out, size_t(floats) * sizeof(float));
        std::memcpy(sin + at, s_out, size_t(floats) * sizeof(float));
    }
}

// Element types; Stream writes with non-temporal stores, which need 16-byte alignment.
template <bool Stream>
struct F32 {
    using T = float;
    using Cached = F32<false>;
    static constexpr bool kStream = Stream;
    static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, __m256 v) {
        if (Stream) {
            _mm_stream_ps(p, _mm256_castps256_ps128(v));
            _mm_stream_ps(p + 4, _mm256_extractf128_ps(v, 1));
        } else {
            _mm256_storeu_ps(p, v);
        }
    }
};

template <bool Stream>
struct F16 {
    using T = uint16_t;
    using Cached = F16<false>;
    static constexpr bool kStream = Stream;
    static __m256 load(const uint16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static void store(uint16_t* p, __m256 v) {
        const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (Stream)
            _mm_stream_si128(reinterpret_cast<__m128i*>(p), h);
        else
            _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    }
};

// 8 pairs (x[j], x[j + offset]); Parts says which rotated halves to write.
enum Parts { kFirst = 1, kSecond = 2, kBoth = 3 };

template <typename E, int P = kBoth>
void neox8(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
           int64_t offset) {
    const __m256 x0 = E::load(src), x1 = E::load(src + offset);
    const __m256 c = _mm256_loadu_ps(cos), s = _mm256_loadu_ps(sin);
    if (P & kFirst) E::store(dst, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
    if (P & kSecond) E::store(dst + offset, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
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
        for (; i + 8 <= half; i += 8) {
            prefetch_ahead(src + i);
            prefetch_ahead(src + half + i);
            neox8<E, kFirst>(src + i, dst + i, cos + i, sin + i, half);
        }
        for (int64_t j = 0; j < i; j += 8)
            neox8<E, kSecond>(src + j, dst + j, cos + j, sin + j, half);
    } else {
        for (; i + 8 <= half; i += 8) {
            prefetch_ahead(src + i);
            prefetch_ahead(src + half + i);
            neox8<E>(src + i, dst + i, cos + i, sin + i, half);
        }
    }
    if (i < half) {  // the last pairs go through a zero-padded buffer, both halves side by side
        const size_t n = size_t(half - i);
        T x[16] = {};
        float c[8] = {}, s[8] = {};
        std::memcpy(x, src + i, n * sizeof(T));
        std::memcpy(x + 8, src + half + i, n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        neox8<typename E::Cached>(x, x, c, s, 8);
        std::memcpy(dst + i, x, n * sizeof(T));
        std::memcpy(dst + half + i, x + 8, n * sizeof(T));
    }
}

// 4 adjacent pairs with the interleaved tables: x*cos + swap_pairs(x)*sin.
template <typename E>
void normal8(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin) {
    const __m256 x = E::load(src);
    const __m256 swapped = _mm256_permute_ps(x, 0xb1);
    E::store(dst, _mm256_fmadd_ps(x, _mm256_loadu_ps(cos),
                                  _mm256_mul_ps(swapped, _mm256_loadu_ps(sin))));
}

template <typename E>
void normal(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
            int64_t half) {
    using T = typename E::T;
    const int64_t n_rot = 2 * half;
    int64_t i = 0;
    for (; i + 8 <= n_rot; i += 8) {
        prefetch_ahead(src + i);
        normal8<E>(src + i, dst + i, cos + i, sin + i);
    }
    if (i < n_rot) {
        const size_t n = size_t(n_rot - i);
        T x[8] = {};
        float c[8] = {}, s[8] = {};
        std::memcpy(x, src + i, n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        normal8<typename E::Cached>(x, x, c, s);
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

extern const Kernel kAvx2Kernel = {
    "avx2", tables<false>, tables<true>, neox_row<F32>, normal_row<F32>, neox_row<F16>,
    normal_row<F16>, fence,
};

}  // namespace pyntk

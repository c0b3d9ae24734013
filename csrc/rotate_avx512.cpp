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

// Element types: 16 values to or from floats, and kPerLine of them as one 64-byte line.
struct F32 {
    using T = float;
    static constexpr int64_t kPerLine = 16;
    static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
    // rotated(j): the 16 results from element j on.
    template <typename F>
    static __m512i line(F rotated, int64_t j) {
        return _mm512_castps_si512(rotated(j));
    }
};

struct F16 {
    using T = uint16_t;
    static constexpr int64_t kPerLine = 32;
    static __m512 load(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static __m256i narrow(__m512 v) {
        return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static void store(uint16_t* p, __m512 v) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v));
    }
    template <typename F>
    static __m512i line(F rotated, int64_t j) {
        return _mm512_inserti64x4(_mm512_castsi256_si512(narrow(rotated(j))),
                                  narrow(rotated(j + 16)), 1);
    }
};

// Large outputs are written around the caches with non-temporal stores, of whole aligned
// 64-byte lines: rows of numpy's and ggml's arrays start 16 bytes into a line, and 16-byte
// stores there ran at ~0.8 of a copy where whole lines run at ~0.9 (one thread, Xeon). A
// row's results arrive in address order, a line's worth at a time; Lines shifts them onto
// line boundaries, and writes the lines that the row shares with its neighbours in 16-byte
// pieces, which the next row, written right after, completes in the same write-combining
// buffer. A row must be whole lines long and start on 16 bytes.
class Lines {
  public:
    static bool fits(const void* dst, int64_t bytes) {
        return reinterpret_cast<uintptr_t>(dst) % 16 == 0 && bytes % 64 == 0;
    }
    explicit Lines(void* dst)
        : shift_(int(reinterpret_cast<uintptr_t>(dst) % 64 / 4)),
          line_(reinterpret_cast<char*>(dst) - 4 * shift_),
          // lane l of a line is lane l - shift of this vector, or lane l + 16 - shift of
          // the one before
          pick_(_mm512_add_epi32(
              _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
              _mm512_set1_epi32(16 - shift_))),
          last_(_mm512_setzero_si512()) {}

    void put(__m512i v) {
        const __m512i line = _mm512_permutex2var_epi32(last_, pick_, v);
        if (first_ && shift_)
            pieces(line, shift_ / 4, 4);
        else
            _mm512_stream_si512(reinterpret_cast<__m512i*>(line_), line);
        first_ = false;
        line_ += 64;
        last_ = v;
    }

    void end() {
        if (shift_) pieces(_mm512_permutex2var_epi32(last_, pick_, last_), 0, shift_ / 4);
    }

  private:
    // 16-byte pieces [from, to) of the line at line_.
    void pieces(__m512i line, int from, int to) {
        alignas(64) int32_t lanes[16];
        _mm512_store_si512(lanes, line);
        for (int i = from; i < to; ++i)
            _mm_stream_si128(reinterpret_cast<__m128i*>(line_ + 16 * i),
                             _mm_load_si128(reinterpret_cast<const __m128i*>(lanes + 4 * i)));
    }
    int shift_;  // the row's start, in 4-byte lanes past its line's
    char* line_;
    __m512i pick_, last_;
    bool first_ = true;
};

// The rotated values of 16 pairs (x[j], x[j + half]): first ones, then second ones.
template <typename E>
__m512 neox_first(const typename E::T* src, const float* cos, const float* sin, int64_t half) {
    return _mm512_fmsub_ps(E::load(src), _mm512_loadu_ps(cos),
                           _mm512_mul_ps(E::load(src + half), _mm512_loadu_ps(sin)));
}

template <typename E>
__m512 neox_second(const typename E::T* src, const float* cos, const float* sin, int64_t half) {
    return _mm512_fmadd_ps(E::load(src), _mm512_loadu_ps(sin),
                           _mm512_mul_ps(E::load(src + half), _mm512_loadu_ps(cos)));
}

// 16 pairs (x[j], x[j + offset]) rotated with cached stores; both are read before either
// is written, so src may equal dst.
template <typename E>
void neox16(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
            int64_t offset) {
    const __m512 first = neox_first<E>(src, cos, sin, offset);
    E::store(dst + offset, neox_second<E>(src, cos, sin, offset));
    E::store(dst, first);
}

// 8 adjacent pairs with the paired tables: x*cos + swap_pairs(x)*sin.
template <typename E>
__m512 normal16(const typename E::T* src, const float* cos, const float* sin) {
    const __m512 x = E::load(src);
    return _mm512_fmadd_ps(x, _mm512_loadu_ps(cos),
                           _mm512_mul_ps(_mm512_permute_ps(x, 0xb1), _mm512_loadu_ps(sin)));
}

template <typename E>
void neox(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
          int64_t half, bool stream) {
    using T = typename E::T;
    if (stream && half % E::kPerLine == 0 && Lines::fits(dst, 2 * half * int64_t(sizeof(T)))) {
        // One half after the other, in address order (the second pass reads the source
        // from L1).
        Lines out(dst);
        const auto first = [&](int64_t j) {
            prefetch_ahead(src + j);
            prefetch_ahead(src + half + j);
            return neox_first<E>(src + j, cos + j, sin + j, half);
        };
        const auto second = [&](int64_t j) {
            return neox_second<E>(src + j, cos + j, sin + j, half);
        };
        for (int64_t j = 0; j < half; j += E::kPerLine) out.put(E::line(first, j));
        for (int64_t j = 0; j < half; j += E::kPerLine) out.put(E::line(second, j));
        out.end();
        return;
    }
    int64_t i = 0;
    for (; i + 16 <= half; i += 16) {
        prefetch_ahead(src + i);
        prefetch_ahead(src + half + i);
        neox16<E>(src + i, dst + i, cos + i, sin + i, half);
    }
    if (i < half) {  // the last pairs go through a zero-padded buffer, both halves side by side
        const size_t n = size_t(half - i);
        T x[32] = {};
        float c[16] = {}, s[16] = {};
        std::memcpy(x, src + i, n * sizeof(T));
        std::memcpy(x + 16, src + half + i, n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        neox16<E>(x, x, c, s, 16);
        std::memcpy(dst + i, x, n * sizeof(T));
        std::memcpy(dst + half + i, x + 16, n * sizeof(T));
    }
}

template <typename E>
void normal(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
            int64_t half, bool stream) {
    using T = typename E::T;
    const int64_t n_rot = 2 * half;
    if (stream && n_rot % E::kPerLine == 0 && Lines::fits(dst, n_rot * int64_t(sizeof(T)))) {
        Lines out(dst);
        const auto rotated = [&](int64_t j) {
            prefetch_ahead(src + j);
            return normal16<E>(src + j, cos + j, sin + j);
        };
        for (int64_t j = 0; j < n_rot; j += E::kPerLine) out.put(E::line(rotated, j));
        out.end();
        return;
    }
    int64_t i = 0;
    for (; i + 16 <= n_rot; i += 16) {
        prefetch_ahead(src + i);
        E::store(dst + i, normal16<E>(src + i, cos + i, sin + i));
    }
    if (i < n_rot) {
        const size_t n = size_t(n_rot - i);
        T x[16] = {};
        float c[16] = {}, s[16] = {};
        std::memcpy(x, src + i, n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        E::store(x, normal16<E>(x, c, s));
        std::memcpy(dst + i, x, n * sizeof(T));
    }
}

void fence() { _mm_sfence(); }

}  // namespace

extern const Kernel kAvx512Kernel = {
    "avx512", tables<false>, tables<true>, neox<F32>, normal<F32>, neox<F16>, normal<F16>, fence,
};

}  // namespace pyntk

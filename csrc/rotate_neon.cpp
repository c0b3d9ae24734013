// AArch64 Advanced SIMD kernel: 4 floats a vector. NEON and the half<->float conversions
// are part of every AArch64 CPU, so this file needs no extra compiler flags.
#include <arm_neon.h>

#include <cstring>

#include "rotate.h"

namespace pyntk {

namespace {

// pi/2 as the sum of two doubles: theta - k*pi/2 computed with two FMAs stays exact to
// ~1e-16 for any k, so the angle of a large position is as good as the double theta itself.
constexpr double kTwoOverPi = 0.63661977236758134308;
constexpr double kPiOver2Hi = 1.5707963267948966192;
constexpr double kPiOver2Lo = 6.1232339957367660e-17;

// Taylor series of sin and cos on |r| <= pi/4: the first omitted terms, r^11/11! and
// r^12/12!, are below 2e-9, far under float rounding.
constexpr float kS1 = -1.0f / 6, kS2 = 1.0f / 120, kS3 = -1.0f / 5040, kS4 = 1.0f / 362880;
constexpr float kC1 = -1.0f / 2, kC2 = 1.0f / 24, kC3 = -1.0f / 720, kC4 = 1.0f / 40320,
                kC5 = -1.0f / 3628800;

// Reduces 2 double angles to r in [-pi/4, pi/4] (as float) and the quadrant k mod 4.
void reduce2(float64x2_t theta, float32x2_t* r, int32x2_t* quadrant) {
    const float64x2_t k = vrndnq_f64(vmulq_n_f64(theta, kTwoOverPi));
    float64x2_t rest = vfmsq_f64(theta, k, vdupq_n_f64(kPiOver2Hi));
    rest = vfmsq_f64(rest, k, vdupq_n_f64(kPiOver2Lo));
    // k mod 4 in double, because k itself may not fit an int32.
    const float64x2_t q = vfmsq_f64(k, vrndmq_f64(vmulq_n_f64(k, 0.25)), vdupq_n_f64(4.0));
    *r = vcvt_f32_f64(rest);
    *quadrant = vmovn_s64(vcvtq_s64_f64(q));
}

// cos and sin of theta_lo (lanes 0-1) and theta_hi (lanes 2-3), times attn.
void sincos4(float64x2_t theta_lo, float64x2_t theta_hi, float attn, float32x4_t* cos,
             float32x4_t* sin) {
    float32x2_t r_lo, r_hi;
    int32x2_t q_lo, q_hi;
    reduce2(theta_lo, &r_lo, &q_lo);
    reduce2(theta_hi, &r_hi, &q_hi);
    const float32x4_t r = vcombine_f32(r_lo, r_hi);
    const int32x4_t q = vcombine_s32(q_lo, q_hi);
    const float32x4_t r2 = vmulq_f32(r, r);

    float32x4_t sp = vfmaq_f32(vdupq_n_f32(kS3), r2, vdupq_n_f32(kS4));
    sp = vfmaq_f32(vdupq_n_f32(kS2), sp, r2);
    sp = vfmaq_f32(vdupq_n_f32(kS1), sp, r2);
    const float32x4_t sin_r = vfmaq_f32(r, vmulq_f32(sp, r2), r);
    float32x4_t cp = vfmaq_f32(vdupq_n_f32(kC4), r2, vdupq_n_f32(kC5));
    cp = vfmaq_f32(vdupq_n_f32(kC3), cp, r2);
    cp = vfmaq_f32(vdupq_n_f32(kC2), cp, r2);
    cp = vfmaq_f32(vdupq_n_f32(kC1), cp, r2);
    const float32x4_t cos_r = vfmaq_f32(vdupq_n_f32(1.0f), cp, r2);

    // theta = r + q*pi/2: odd quadrants swap sin and cos; sin is negated in quadrants 2
    // and 3, cos in 1 and 2, i.e. when bit 1 of q (sin) or of q + 1 (cos) is set.
    const int32x4_t one = vdupq_n_s32(1), two = vdupq_n_s32(2);
    const uint32x4_t swap = vtstq_s32(q, one);
    const uint32x4_t sin_sign = vshlq_n_u32(vreinterpretq_u32_s32(vandq_s32(q, two)), 30);
    const uint32x4_t cos_sign =
        vshlq_n_u32(vreinterpretq_u32_s32(vandq_s32(vaddq_s32(q, one), two)), 30);
    const uint32x4_t s = vreinterpretq_u32_f32(vbslq_f32(swap, cos_r, sin_r));
    const uint32x4_t c = vreinterpretq_u32_f32(vbslq_f32(swap, sin_r, cos_r));
    *sin = vmulq_n_f32(vreinterpretq_f32_u32(veorq_u32(s, sin_sign)), attn);
    *cos = vmulq_n_f32(vreinterpretq_f32_u32(veorq_u32(c, cos_sign)), attn);
}

void tables(const double* inv, int64_t half, double pos, float attn, float* cos, float* sin) {
    float32x4_t c, s;
    int64_t i = 0;
    for (; i + 4 <= half; i += 4) {
        sincos4(vmulq_n_f64(vld1q_f64(inv + i), pos), vmulq_n_f64(vld1q_f64(inv + i + 2), pos),
                attn, &c, &s);
        vst1q_f32(cos + i, c);
        vst1q_f32(sin + i, s);
    }
    if (i < half) {
        const size_t n = size_t(half - i);
        double in[4] = {};
        float c_out[4], s_out[4];
        std::memcpy(in, inv + i, n * sizeof(double));
        sincos4(vmulq_n_f64(vld1q_f64(in), pos), vmulq_n_f64(vld1q_f64(in + 2), pos), attn, &c,
                &s);
        vst1q_f32(c_out, c);
        vst1q_f32(s_out, s);
        std::memcpy(cos + i, c_out, n * sizeof(float));
        std::memcpy(sin + i, s_out, n * sizeof(float));
    }
}

struct F32 {
    using T = float;
    static float32x4_t load(const float* p) { return vld1q_f32(p); }
    static void store(float* p, float32x4_t v) { vst1q_f32(p, v); }
    // 4 pairs, split into their first and second members.
    static float32x4x2_t load_pairs(const float* p) { return vld2q_f32(p); }
    static void store_pairs(float* p, float32x4x2_t v) { vst2q_f32(p, v); }
};

struct F16 {
    using T = uint16_t;
    static float32x4_t load(const uint16_t* p) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
    }
    static void store(uint16_t* p, float32x4_t v) {
        vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v)));
    }
    static float32x4x2_t load_pairs(const uint16_t* p) {
        const uint16x4x2_t h = vld2_u16(p);
        float32x4x2_t out;
        out.val[0] = vcvt_f32_f16(vreinterpret_f16_u16(h.val[0]));
        out.val[1] = vcvt_f32_f16(vreinterpret_f16_u16(h.val[1]));
        return out;
    }
    static void store_pairs(uint16_t* p, float32x4x2_t v) {
        uint16x4x2_t h;
        h.val[0] = vreinterpret_u16_f16(vcvt_f16_f32(v.val[0]));
        h.val[1] = vreinterpret_u16_f16(vcvt_f16_f32(v.val[1]));
        vst2_u16(p, h);
    }
};

// out0 = x0*cos - x1*sin, out1 = x0*sin + x1*cos.
void rotate4(float32x4_t* x0, float32x4_t* x1, const float* cos, const float* sin) {
    const float32x4_t c = vld1q_f32(cos), s = vld1q_f32(sin);
    const float32x4_t out0 = vfmsq_f32(vmulq_f32(*x0, c), *x1, s);
    *x1 = vfmaq_f32(vmulq_f32(*x1, c), *x0, s);
    *x0 = out0;
}

// 4 pairs (x[j], x[j + offset]).
template <typename E>
void neox4(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
           int64_t offset) {
    float32x4_t x0 = E::load(src), x1 = E::load(src + offset);
    rotate4(&x0, &x1, cos, sin);
    E::store(dst, x0);
    E::store(dst + offset, x1);
}

template <typename E>
void neox(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
          int64_t half, bool) {
    using T = typename E::T;
    int64_t i = 0;
    for (; i + 4 <= half; i += 4) neox4<E>(src + i, dst + i, cos + i, sin + i, half);
    if (i < half) {  // the last pairs go through a zero-padded buffer, both halves side by side
        const size_t n = size_t(half - i);
        T x[8] = {};
        float c[4] = {}, s[4] = {};
        std::memcpy(x, src + i, n * sizeof(T));
        std::memcpy(x + 4, src + half + i, n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        neox4<E>(x, x, c, s, 4);
        std::memcpy(dst + i, x, n * sizeof(T));
        std::memcpy(dst + half + i, x + 4, n * sizeof(T));
    }
}

// 4 adjacent pairs: the de-interleaving loads make NORMAL the same arithmetic as NEOX,
// with the plain tables.
template <typename E>
void normal4(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin) {
    float32x4x2_t x = E::load_pairs(src);
    rotate4(&x.val[0], &x.val[1], cos, sin);
    E::store_pairs(dst, x);
}

template <typename E>
void normal(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
            int64_t half, bool) {
    using T = typename E::T;
    int64_t i = 0;
    for (; i + 4 <= half; i += 4) normal4<E>(src + 2 * i, dst + 2 * i, cos + i, sin + i);
    if (i < half) {
        const size_t n = size_t(half - i);
        T x[8] = {};
        float c[4] = {}, s[4] = {};
        std::memcpy(x, src + 2 * i, 2 * n * sizeof(T));
        std::memcpy(c, cos + i, n * sizeof(float));
        std::memcpy(s, sin + i, n * sizeof(float));
        normal4<E>(x, x, c, s);
        std::memcpy(dst + 2 * i, x, 2 * n * sizeof(T));
    }
}

}  // namespace

extern const Kernel kNeonKernel = {
    "neon", tables, tables, neox<F32>, normal<F32>, neox<F16>, normal<F16>, nullptr,
};

}  // namespace pyntk

// Kernel dispatch, threading, and the scalar kernel every CPU can run.
#include "rotate.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "cpu.h"

namespace pyntk {

namespace {

// ---- scalar kernel --------------------------------------------------------------------

void scalar_tables(const double* inv, int64_t half, double pos, float attn, float* cos,
                   float* sin) {
    for (int64_t i = 0; i < half; ++i) {
        // std::cos/std::sin reduce a double argument exactly, whatever its size.
        const double theta = pos * inv[i];
        cos[i] = float(double(attn) * std::cos(theta));
        sin[i] = float(double(attn) * std::sin(theta));
    }
}

// IEEE half <-> float, round to nearest even, for CPUs without conversion instructions.
float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
        const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    const uint32_t bits = exponent == 0x1f ? sign | 0x7f800000u | (mantissa << 13)
                                           : sign | ((exponent + 112) << 23) | (mantissa << 13);
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t float_to_half(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
    const uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN stays NaN
    if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and up round to infinity
    if (magnitude >= 0x38800000u) {                       // normal half (>= 2^-14)
        const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
        return sign | uint16_t((rounded - 0x38000000u) >> 13);
    }
    // Subnormal half: adding 0.5f rounds to a multiple of 2^-24 (float's ulp at 0.5) in
    // hardware, ties to even; the difference of the bit patterns counts those multiples.
    const float shifted = std::fabs(f) + 0.5f;
    uint32_t shifted_bits;
    std::memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    return sign | uint16_t(shifted_bits - 0x3f000000u);
}

struct F32 {
    using T = float;
    static float load(float v) { return v; }
    static float store(float v) { return v; }
};
struct F16 {
    using T = uint16_t;
    static float load(uint16_t v) { return half_to_float(v); }
    static uint16_t store(float v) { return float_to_half(v); }
};

// Pair i is (x[i * step], x[i * step + offset]).
template <typename E>
void scalar_row(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
                int64_t half, int64_t step, int64_t offset) {
    for (int64_t i = 0; i < half; ++i) {
        const float x0 = E::load(src[i * step]), x1 = E::load(src[i * step + offset]);
        dst[i * step] = E::store(x0 * cos[i] - x1 * sin[i]);
        dst[i * step + offset] = E::store(x0 * sin[i] + x1 * cos[i]);
    }
}

template <typename E>
void scalar_neox(const typename E::T* src, typename E::T* dst, const float* cos, const float* sin,
                 int64_t half, bool) {
    scalar_row<E>(src, dst, cos, sin, half, 1, half);
}

template <typename E>
void scalar_normal(const typename E::T* src, typename E::T* dst, const float* cos,
                   const float* sin, int64_t half, bool) {
    scalar_row<E>(src, dst, cos, sin, half, 2, 1);
}

// ---- dispatch ---------------------------------------------------------------------------

std::atomic<const Kernel*> g_active{nullptr};

bool supported(const Kernel& k) {
    const CpuFeatures& f = cpu_features();
#if PYNTK_X86_KERNELS
    if (&k == &kAvx512Kernel) return f.avx512f;
    if (&k == &kAvx2Kernel) return f.avx2 && f.fma && f.f16c;
#endif
#if PYNTK_NEON_KERNEL
    if (&k == &kNeonKernel) return f.neon;
#endif
    (void)f;
    return &k == &kScalarKernel;
}

const Kernel* const kAllKernels[] = {
#if PYNTK_X86_KERNELS
    &kAvx512Kernel,
    &kAvx2Kernel,
#endif
#if PYNTK_NEON_KERNEL
    &kNeonKernel,
#endif
    &kScalarKernel,
};

int64_t output_bytes(const RotateJob& job) {
    return job.batch * job.tokens * job.heads * job.head_dim * (job.f16 ? 2 : 4);
}

// An output this large is past the last-level cache of most CPUs before the rotation ends;
// writing it around the caches saves reading every destination line first.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

template <typename T, typename Row>
void rotate_units(const RotateJob& job, const Kernel& k, Row row, int64_t begin, int64_t end,
                  float* cos, float* sin) {
    const TablesFn tables = job.mode == RopeMode::normal ? k.normal_tables : k.tables;
    const int64_t n_rot = 2 * job.half;
    const bool copy_rest = job.src != job.dst && job.head_dim > n_rot;
    const bool stream = job.src != job.dst && k.fence && output_bytes(job) >= kStreamBytes;
    int64_t last_pos = -1;
    for (int64_t u = begin; u < end; ++u) {
        const int64_t b = u / job.tokens, t = u % job.tokens;
        const int64_t p = job.pos[b * job.pos_batch_stride + t];
        if (p != last_pos) {
            tables(job.inv, job.half, double(p), job.attn, cos, sin);
            last_pos = p;
        }
        const char* src = job.src + b * job.src_stride[0] + t * job.src_stride[1];
        char* dst = job.dst + b * job.dst_stride[0] + t * job.dst_stride[1];
        for (int64_t h = 0; h < job.heads; ++h) {
            const T* s = reinterpret_cast<const T*>(src + h * job.src_stride[2]);
            T* d = reinterpret_cast<T*>(dst + h * job.dst_stride[2]);
            row(s, d, cos, sin, job.half, stream);
            if (copy_rest) std::memcpy(d + n_rot, s + n_rot, sizeof(T) * (job.head_dim - n_rot));
        }
    }
    if (stream) k.fence();
}

// tables: 4 * half floats of scratch for this range alone.
void rotate_range(const RotateJob& job, const Kernel& k, int64_t begin, int64_t end,
                  float* tables) {
    float* cos = tables;
    float* sin = tables + 2 * job.half;
    if (job.f16)
        rotate_units<uint16_t>(job, k, job.mode == RopeMode::neox ? k.neox_f16 : k.normal_f16,
                               begin, end, cos, sin);
    else
        rotate_units<float>(job, k, job.mode == RopeMode::neox ? k.neox_f32 : k.normal_f32,
                            begin, end, cos, sin);
}

// A thread costs tens of microseconds to start: give each at least ~1 MiB to move.
int auto_threads(const RotateJob& job) {
    const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
    return int(std::max<int64_t>(1, std::min(cores, output_bytes(job) >> 20)));
}

}  // namespace

extern const Kernel kScalarKernel = {
    "scalar", scalar_tables, scalar_tables, scalar_neox<F32>, scalar_normal<F32>,
    scalar_neox<F16>, scalar_normal<F16>, nullptr,
};

std::vector<const Kernel*> available_kernels() {
    std::vector<const Kernel*> out;
    for (const Kernel* k : kAllKernels)
        if (supported(*k)) out.push_back(k);
    return out;
}

const Kernel& active_kernel() {
    const Kernel* k = g_active.load();
    if (!k) {
        k = available_kernels().front();
        g_active.store(k);
    }
    return *k;
}

void set_kernel(const std::string& name) {
    std::string known;
    for (const Kernel* k : kAllKernels) {
        if (name == k->name) {
            if (!supported(*k))
                throw std::invalid_argument("kernel '" + name + "' needs instructions this CPU " +
                                            "or OS does not provide; see pyntk.cpu_features()");
            g_active.store(k);
            return;
        }
        known += (known.empty() ? "" : ", ") + std::string(k->name);
    }
    throw std::invalid_argument("unknown kernel '" + name + "'; this build has: " + known);
}

void kernel_from_environment() {
    const char* name = std::getenv("PYNTK_KERNEL");
    if (name && *name) {
        try {
            set_kernel(name);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(std::string("PYNTK_KERNEL: ") + e.what());
        }
    }
}

void rotate(const RotateJob& job, int threads) {
    const Kernel& k = active_kernel();
    const int64_t units = job.batch * job.tokens;
    if (units == 0 || job.heads == 0) return;
    const int64_t n = std::min<int64_t>(threads > 0 ? threads : auto_threads(job), units);
    // Allocated here, where running out of memory is still an exception and not a crash.
    std::vector<float> tables(size_t(n * 4 * job.half));
    std::vector<std::thread> workers;
    workers.reserve(size_t(n));
    int64_t begin = 0;
    for (int64_t w = 0; w < n; ++w) {
        float* scratch = tables.data() + w * 4 * job.half;
        const int64_t end = units * (w + 1) / n;
        if (w + 1 < n) {
            try {
                workers.emplace_back(rotate_range, std::cref(job), std::cref(k), begin, end,
                                     scratch);
                begin = end;
                continue;
            } catch (...) {
                // No thread to be had (std::system_error, or no memory for one): this
                // thread does the rest, and the ones started are joined below.
            }
        }
        rotate_range(job, k, begin, units, scratch);
        break;
    }
    for (std::thread& t : workers) t.join();
}

void cos_sin(const double* inv, int64_t half, float attn, const int64_t* pos, int64_t n,
             float* cos, float* sin) {
    const Kernel& k = active_kernel();
    for (int64_t i = 0; i < n; ++i) k.tables(inv, half, double(pos[i]), attn, cos + i * half,
                                             sin + i * half);
}

}  // namespace pyntk

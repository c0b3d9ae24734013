// RoPE rotation: one kernel per instruction set, chosen once at run time.
//
// The instruction-set files (rotate_avx2.cpp, rotate_avx512.cpp, rotate_neon.cpp) are
// compiled with their own target flags, so they must not call inline functions or
// templates of the standard library (std::vector, std::min, <cmath> ...): the linker keeps
// one copy of each and may hand the AVX-512 copy to the scalar path. They call only
// intrinsics, memcpy and their own functions, which live in an anonymous namespace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pyntk {

// llama.cpp's mode numbers: NORMAL rotates (x[2i], x[2i+1]), NEOX (x[i], x[i + n_rot/2]).
enum class RopeMode : int { normal = 0, neox = 2 };

// cos[i] = attn * cos(pos * inv[i]) and sin[i] = attn * sin(pos * inv[i]) for i < half,
// the angle formed and reduced in double, so large positions stay accurate.
using TablesFn = void (*)(const double* inv, int64_t half, double pos, float attn, float* cos,
                          float* sin);

// Rotates the first n_rot = 2 * half values of one head; src may equal dst. NEOX reads
// Kernel::tables, NORMAL Kernel::normal_tables.
// stream: dst will not be read again soon, so the kernel may write it around the caches
// (then the caller ends with Kernel::fence).
using RowF32 = void (*)(const float* src, float* dst, const float* cos, const float* sin,
                        int64_t half, bool stream);
using RowF16 = void (*)(const uint16_t* src, uint16_t* dst, const float* cos, const float* sin,
                        int64_t half, bool stream);

struct Kernel {
    const char* name;
    TablesFn tables;
    // The tables NORMAL mode reads: `tables` itself, or (x86) cos = (c0, c0, c1, c1, ...),
    // sin = (-s0, s0, -s1, s1, ...), 2 * half floats each, so that one pair swap and one FMA
    // rotate a whole vector.
    TablesFn normal_tables;
    RowF32 neox_f32, normal_f32;
    RowF16 neox_f16, normal_f16;
    // Orders streamed stores before the caller hands the result on; nullptr when the
    // kernel never streams.
    void (*fence)();
};

extern const Kernel kScalarKernel;
#if PYNTK_X86_KERNELS
extern const Kernel kAvx2Kernel;
extern const Kernel kAvx512Kernel;
#endif
#if PYNTK_NEON_KERNEL
extern const Kernel kNeonKernel;
#endif

// Kernels this CPU can run, best first; the scalar one is always last.
std::vector<const Kernel*> available_kernels();
const Kernel& active_kernel();
// Throws std::invalid_argument for an unknown name or one this CPU cannot run.
void set_kernel(const std::string& name);
// Applies $PYNTK_KERNEL if set; throws like set_kernel.
void kernel_from_environment();

// One validated rotation. Arrays are [batch, tokens, heads, head_dim] with byte strides
// (head_dim contiguous); dst may equal src (same strides) or not overlap it at all, and no
// two of dst's elements share memory. pos and inv are the core's own copies, which nothing
// else writes while the rotation runs.
struct RotateJob {
    const char* src = nullptr;
    char* dst = nullptr;
    int64_t batch = 1, tokens = 0, heads = 0, head_dim = 0;
    int64_t src_stride[3] = {0, 0, 0};  // batch, token, head
    int64_t dst_stride[3] = {0, 0, 0};
    const int64_t* pos = nullptr;  // [tokens], or [batch, tokens] when pos_batch_stride = tokens
    int64_t pos_batch_stride = 0;
    const double* inv = nullptr;  // [half]
    int64_t half = 0;
    float attn = 1.0f;
    RopeMode mode = RopeMode::neox;
    bool f16 = false;
};

// threads <= 0: as many as the cores and the size of the job make worth it.
void rotate(const RotateJob& job, int threads);

// cos/sin [n, half] for n positions, as the active kernel computes them.
void cos_sin(const double* inv, int64_t half, float attn, const int64_t* pos, int64_t n,
             float* cos, float* sin);

}  // namespace pyntk

// What the CPU, and the OS for the AVX register state, let us run.
#pragma once

namespace pyntk {

struct CpuFeatures {
    bool avx2 = false;     // AVX2 with OS-saved YMM state
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;  // AVX-512F with OS-saved ZMM and mask state
    bool neon = false;     // AArch64 Advanced SIMD (always there on AArch64)
};

// Detected once, on first call.
const CpuFeatures& cpu_features();

}  // namespace pyntk

#include "cpu.h"

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define PYNTK_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace pyntk {

namespace {

#if PYNTK_X86
struct Regs {
    uint32_t a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(uint32_t leaf, uint32_t subleaf) {
    Regs r;
#if defined(_MSC_VER)
    int v[4];
    __cpuidex(v, int(leaf), int(subleaf));
    r.a = uint32_t(v[0]), r.b = uint32_t(v[1]), r.c = uint32_t(v[2]), r.d = uint32_t(v[3]);
#else
    if (leaf > __get_cpuid_max(leaf & 0x80000000u, nullptr)) return r;
    __cpuid_count(leaf, subleaf, r.a, r.b, r.c, r.d);
#endif
    return r;
}

// XCR0: which register states the OS saves on a context switch. A CPU may have
// AVX while the OS (or a hypervisor) leaves YMM/ZMM unsaved; then AVX code faults.
uint64_t xcr0() {
#if defined(_MSC_VER)
    return _xgetbv(0);
#else
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
#endif
}

bool bit(uint32_t reg, int n) { return (reg >> n) & 1u; }

CpuFeatures detect() {
    CpuFeatures f;
    const Regs l1 = cpuid(1, 0);
    const bool osxsave = bit(l1.c, 27);
    if (!osxsave || !bit(l1.c, 28)) return f;  // no AVX, or XGETBV unusable
    const uint64_t xcr = xcr0();
    const bool os_ymm = (xcr & 0x6) == 0x6;     // SSE and AVX state
    const bool os_zmm = (xcr & 0xe6) == 0xe6;   // plus opmask, ZMM_Hi256, Hi16_ZMM
    const Regs l7 = cpuid(7, 0);
    f.avx2 = os_ymm && bit(l7.b, 5);
    f.fma = os_ymm && bit(l1.c, 12);
    f.f16c = os_ymm && bit(l1.c, 29);
    f.avx512f = os_zmm && bit(l7.b, 16);
    return f;
}
#else
CpuFeatures detect() {
    CpuFeatures f;
#if defined(__aarch64__) || defined(_M_ARM64)
    f.neon = true;
#endif
    return f;
}
#endif

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

}  // namespace pyntk

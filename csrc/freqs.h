// Per-pair inverse frequencies and the attention factor for every scaling method.
#pragma once

#include <cstdint>
#include <vector>

namespace pyntk {

// Order and names must match pyntk.scaling.METHODS ("-" becomes "_").
enum class Method : int { none, linear, ntk, dynamic, ntk_by_parts, yarn, llama3 };

struct Scaling {
    Method method = Method::none;
    int64_t dims = 128;
    double base = 10000.0;
    double original_context = 0.0;
    double alpha = 1.0;
    double factor = 1.0;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double attn_factor = 1.0;
    double low_freq_factor = 1.0;
    double high_freq_factor = 4.0;
};

constexpr int64_t kMaxDims = int64_t(1) << 16;

// Throws std::invalid_argument for anything that would make the arithmetic meaningless.
void check(const Scaling& s);

// Fills inv[0 .. dims/2) and returns the attention (temperature) factor.
// seq_len <= 0 means "unknown", which leaves Dynamic NTK unscaled.
double inv_freq(const Scaling& s, double seq_len, double* inv);

}  // namespace pyntk

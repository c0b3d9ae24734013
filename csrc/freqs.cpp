#include "freqs.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace pyntk {

namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

void plain(double base, int64_t dims, double* inv) {
    for (int64_t i = 0; i < dims / 2; ++i) inv[i] = std::pow(base, -2.0 * double(i) / double(dims));
}

// Base that divides the lowest pair's frequency by `multiplier` and keeps pair 0.
double ntk_base(double base, int64_t dims, double multiplier) {
    return base * std::pow(multiplier, double(dims) / double(dims - 2));
}

// Pair index at which a frequency turns `rotations` full turns over the original context.
double corr_pair(const Scaling& s, double rotations) {
    return double(s.dims) * std::log(s.original_context / (kTwoPi * rotations)) /
           (2.0 * std::log(s.base));
}

}  // namespace

void check(const Scaling& s) {
    if (s.dims < 2 || s.dims > kMaxDims || s.dims % 2 != 0)
        throw std::invalid_argument("dims must be an even integer from 2 to " +
                                    std::to_string(kMaxDims) + ", got " + std::to_string(s.dims));
    if ((s.method == Method::ntk || s.method == Method::dynamic) && s.dims < 4)
        throw std::invalid_argument("dims must be at least 4 for ntk and dynamic");
    if (!(s.base > 1.0) || !std::isfinite(s.base))
        throw std::invalid_argument("base must be a finite number > 1");
    const bool needs_ctx = s.method == Method::dynamic || s.method == Method::ntk_by_parts ||
                           s.method == Method::yarn || s.method == Method::llama3;
    if (needs_ctx && !(s.original_context >= 1.0))
        throw std::invalid_argument("original_context must be >= 1 for this method");
    if (static_cast<int>(s.method) < 0 || static_cast<int>(s.method) > static_cast<int>(Method::llama3))
        throw std::invalid_argument("unknown method");
}

double inv_freq(const Scaling& s, double seq_len, double* inv) {
    check(s);
    const int64_t half = s.dims / 2;
    double attention = 1.0;
    switch (s.method) {
        case Method::none:
            plain(s.base, s.dims, inv);
            break;
        case Method::linear:
            plain(s.base, s.dims, inv);
            for (int64_t i = 0; i < half; ++i) inv[i] /= s.factor;
            break;
        case Method::ntk:
            plain(ntk_base(s.base, s.dims, s.alpha), s.dims, inv);
            break;
        case Method::dynamic: {
            double base = s.base;
            if (seq_len > s.original_context)
                base = ntk_base(s.base, s.dims,
                                s.factor * seq_len / s.original_context - (s.factor - 1.0));
            plain(base, s.dims, inv);
            break;
        }
        case Method::ntk_by_parts:
        case Method::yarn: {
            plain(s.base, s.dims, inv);
            const double low = std::max(0.0, std::floor(corr_pair(s, s.beta_fast)));
            const double high = std::min(double(s.dims - 1), std::ceil(corr_pair(s, s.beta_slow)));
            const double span = std::max(0.001, high - low);
            for (int64_t i = 0; i < half; ++i) {
                const double ramp = std::min(1.0, std::max(0.0, (double(i) - low) / span));
                const double keep = 1.0 - ramp;  // 1: extrapolate (keep), 0: interpolate
                inv[i] = inv[i] / s.factor * (1.0 - keep) + inv[i] * keep;
            }
            if (s.method == Method::yarn) attention = s.attn_factor * (0.1 * std::log(s.factor) + 1.0);
            break;
        }
        case Method::llama3: {
            plain(s.base, s.dims, inv);
            const double low_wavelength = s.original_context / s.low_freq_factor;
            const double high_wavelength = s.original_context / s.high_freq_factor;
            for (int64_t i = 0; i < half; ++i) {
                const double wavelength = kTwoPi / inv[i];
                if (wavelength > low_wavelength) {
                    inv[i] /= s.factor;
                } else if (wavelength >= high_wavelength) {
                    const double smooth = (s.original_context / wavelength - s.low_freq_factor) /
                                          (s.high_freq_factor - s.low_freq_factor);
                    inv[i] = (1.0 - smooth) * inv[i] / s.factor + smooth * inv[i];
                }
            }
            break;
        }
    }
    return attention;
}

}  // namespace pyntk

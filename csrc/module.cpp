// Python bindings of the core. Every argument is checked here or in the callee;
// bad input raises a Python exception, never crashes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu.h"
#include "freqs.h"
#include "rotate.h"

namespace py = pybind11;

#define STRINGIFY(x) #x
#define MACRO_STRINGIFY(x) STRINGIFY(x)

namespace {

py::tuple inv_freq(pyntk::Method method, int64_t dims, double base, double original_context,
                   double alpha, double factor, double beta_fast, double beta_slow,
                   double attn_factor, double low_freq_factor, double high_freq_factor,
                   double seq_len) {
    pyntk::Scaling s{method, dims, base, original_context, alpha, factor, beta_fast, beta_slow,
                     attn_factor, low_freq_factor, high_freq_factor};
    pyntk::check(s);
    py::array_t<double> inv(dims / 2);
    double attention;
    {
        py::gil_scoped_release release;
        attention = pyntk::inv_freq(s, seq_len, inv.mutable_data());
    }
    return py::make_tuple(inv, attention);
}

constexpr int kMaxThreads = 256;

[[noreturn]] void type_error(const std::string& what) { throw py::type_error(what); }
[[noreturn]] void value_error(const std::string& what) { throw py::value_error(what); }

std::string shape_str(const py::array& a) {
    std::string out = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) out += (i ? ", " : "") + std::to_string(a.shape(i));
    return out + (a.ndim() == 1 ? ",)" : ")");
}

bool native_order(const py::dtype& dt) {
    const char order = dt.byteorder();
    return order == '=' || order == '|';
}

bool native_float(const py::dtype& dt, py::ssize_t size) {
    return dt.kind() == 'f' && dt.itemsize() == size && native_order(dt);
}

// Checks one [batch?, tokens, heads, head_dim] float array and returns its shape (batch
// 1 when absent) and byte strides of batch, token and head.
void float_view(const py::array& a, const char* name, int64_t shape[4], int64_t strides[3],
                bool* f16) {
    if (a.ndim() != 3 && a.ndim() != 4)
        value_error(std::string(name) + " must be shaped [tokens, heads, head_dim] or [batch, " +
                    "tokens, heads, head_dim], got shape " + shape_str(a));
    const py::dtype dt = a.dtype();
    if (!native_float(dt, 4) && !native_float(dt, 2))
        type_error(std::string(name) + " must be float32 or float16 in native byte order, got " +
                   std::string(py::str(dt)));
    *f16 = dt.itemsize() == 2;
    const py::ssize_t item = dt.itemsize();
    const int extra = a.ndim() == 3 ? 1 : 0;
    shape[0] = extra ? 1 : a.shape(0);
    strides[0] = extra ? 0 : a.strides(0);
    for (int i = 1; i < 4; ++i) shape[i] = a.shape(i - extra);
    for (int i = 1; i < 3; ++i) strides[i] = a.strides(i - extra);
    if (a.size() == 0) return;  // nothing is read or written: any strides will do
    const py::ssize_t last = a.strides(a.ndim() - 1);
    if (shape[3] > 1 && last != item)
        value_error(std::string(name) + "'s last axis must be contiguous (stride " +
                    std::to_string(item) + " bytes), got stride " + std::to_string(last) +
                    "; pass np.ascontiguousarray(" + name + ")");
    bool aligned = reinterpret_cast<uintptr_t>(a.data()) % uintptr_t(item) == 0;
    for (int i = 0; i < 3; ++i) aligned = aligned && strides[i] % item == 0;
    if (!aligned) value_error(std::string(name) + "'s data and strides must be aligned to its items");
}

// [lowest, highest) byte address an array touches; empty arrays touch nothing.
std::pair<uintptr_t, uintptr_t> extent(const py::array& a) {
    uintptr_t low = reinterpret_cast<uintptr_t>(a.data()), high = low;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (a.shape(i) == 0) return {0, 0};
        const py::ssize_t step = a.strides(i) * (a.shape(i) - 1);
        (step < 0 ? low : high) += step;
    }
    return {low, high + uintptr_t(a.itemsize())};
}

// Refuses an output two of whose elements share memory: several threads, or one thread twice,
// would write the same bytes. Taken by increasing stride, each axis must step past all that the
// axes before it span (a row of the contiguous last axis to begin with); that proves the
// elements distinct in O(ndim log ndim), and every layout slicing, transposing and reshaping
// make passes. Strides that interleave two axes (only as_strided makes them) may or may not
// collide, and deciding which is an integer program, so those are refused too ("may overlap"),
// as numpy's ufuncs treat an internal overlap they cannot cheaply rule out as one.
void check_distinct_elements(const py::array& a, bool in_place) {
    if (a.size() == 0) return;  // nothing is written
    const py::ssize_t last = a.ndim() - 1;
    std::vector<std::pair<py::ssize_t, py::ssize_t>> axes;  // (|stride|, axis)
    for (py::ssize_t i = 0; i < last; ++i)
        if (a.shape(i) > 1) axes.emplace_back(std::abs(a.strides(i)), i);
    std::sort(axes.begin(), axes.end());
    const py::ssize_t row = a.shape(last) * a.itemsize();
    py::ssize_t span = row;
    for (const auto& [stride, axis] : axes) {
        const std::string on_axis = std::to_string(axis);
        std::string why;
        if (stride == 0)
            why = "overlaps itself (stride 0 on axis " + on_axis + ")";
        else if (stride < row)  // neighbours along this axis share bytes
            why = "overlaps itself (axis " + on_axis + "'s stride of " + std::to_string(stride) +
                  " bytes is less than the " + std::to_string(row) + " bytes of its last axis)";
        else if (stride < span)
            why = "may overlap itself (axis " + on_axis + "'s stride of " +
                  std::to_string(stride) + " bytes is less than the " + std::to_string(span) +
                  " bytes spanned by its axes of smaller stride)";
        if (!why.empty())
            value_error(in_place ? "x " + why +
                                       ", so it cannot be rotated in place; pass out=np.empty(" +
                                       "x.shape, x.dtype)"
                                 : "out " + why +
                                       "; pass a contiguous array such as np.empty(x.shape, " +
                                       "x.dtype)");
        span += stride * (a.shape(axis) - 1);
    }
}

// The caller's arrays stay writable once the GIL is released: by another Python thread, or
// by the rotation itself when they share memory with its output. So the kernel reads private
// copies of the positions and the frequency table, checked after copying: what it reads is
// what was checked (a position flipped past 2^53 in between gave |cos| > 1).
template <typename T>
std::vector<T> pinned(const py::array& a) {
    std::vector<T> copy(size_t(a.size()));
    if (!copy.empty()) std::memcpy(copy.data(), a.data(), copy.size() * sizeof(T));
    return copy;
}

std::vector<double> inv_table(const py::array& inv) {
    if (inv.ndim() != 1 || inv.dtype().normalized_num() != py::dtype::num_of<double>() ||
        !native_order(inv.dtype()) ||
        !(inv.flags() & py::array::c_style))
        type_error("inv_freq must be a contiguous 1-D float64 array");
    std::vector<double> table = pinned<double>(inv);
    if (table.empty()) value_error("inv_freq must have at least one frequency");
    // Scalings only ever slow pairs down, so 0 <= inv <= 1 and an angle is at most its position.
    for (double v : table)
        if (!(v >= 0.0 && v <= 1.0)) value_error("inv_freq must lie in [0, 1], got " + std::to_string(v));
    return table;
}

std::vector<int64_t> positions_of(const py::array& pos, py::ssize_t ndim_max) {
    if (pos.ndim() < 1 || pos.ndim() > ndim_max ||
        pos.dtype().normalized_num() != py::dtype::num_of<int64_t>() ||
        !native_order(pos.dtype()) || !(pos.flags() & py::array::c_style))
        type_error("positions must be a contiguous int64 array");
    std::vector<int64_t> p = pinned<int64_t>(pos);
    // Past 2^53 a double no longer holds every integer, so neither the angle nor its reduction
    // modulo 2pi (which the SIMD kernels rely on) would mean anything.
    constexpr int64_t max_pos = int64_t(1) << 53;
    for (int64_t v : p)
        if (v < 0 || v > max_pos)
            value_error("positions must be non-negative and at most 2^53, got " + std::to_string(v));
    return p;
}

void check_attn(double attn) {
    if (!(std::fabs(attn) <= double(std::numeric_limits<float>::max())))
        value_error("attention factor must be a finite float32, got " + std::to_string(attn));
}

py::array rotate(py::array x, py::array positions, py::array inv, double attn,
                 pyntk::RopeMode mode, py::object out_arg, int threads) {
    pyntk::RotateJob job;
    int64_t shape[4];
    bool f16;
    float_view(x, "x", shape, job.src_stride, &f16);
    job.batch = shape[0], job.tokens = shape[1], job.heads = shape[2], job.head_dim = shape[3];
    job.f16 = f16;

    if (!out_arg.is_none() && !py::isinstance<py::array>(out_arg))
        type_error("out must be a numpy array or None");
    py::array out = out_arg.is_none() ? x : py::reinterpret_borrow<py::array>(out_arg);
    if (!out.writeable())
        value_error(out_arg.is_none() ? "x is read-only; pass out= to rotate into another array"
                                      : "out is read-only");
    if (!out_arg.is_none()) {
        int64_t out_shape[4];
        bool out_f16;
        float_view(out, "out", out_shape, job.dst_stride, &out_f16);
        if (out.ndim() != x.ndim() || !std::equal(shape, shape + 4, out_shape) || out_f16 != f16)
            value_error("out must have x's shape " + shape_str(x) + " and dtype, got " +
                        shape_str(out) + " " + std::string(py::str(out.dtype())));
        check_distinct_elements(out, false);
        const auto a = extent(x), b = extent(out);
        const bool same = x.data() == out.data() && std::equal(job.src_stride, job.src_stride + 3,
                                                                job.dst_stride);
        if (!same && a.first < b.second && b.first < a.second)
            value_error("out overlaps x; pass out=None to rotate x in place");
    } else {
        check_distinct_elements(x, true);
        std::copy(job.src_stride, job.src_stride + 3, job.dst_stride);
    }

    const std::vector<int64_t> pos = positions_of(positions, 2);
    const bool per_batch = positions.ndim() == 2;
    const bool fits = per_batch ? x.ndim() == 4 && positions.shape(0) == job.batch &&
                                      positions.shape(1) == job.tokens
                                : positions.shape(0) == job.tokens;
    if (!fits) {
        const std::string tokens = std::to_string(job.tokens);
        value_error("positions must be shaped [tokens] = (" + tokens + ",)" +
                    (x.ndim() == 4 ? " or [batch, tokens] = (" + std::to_string(job.batch) +
                                         ", " + tokens + ")"
                                   : std::string()) +
                    ", got " + shape_str(positions));
    }
    job.pos = pos.data();
    job.pos_batch_stride = per_batch ? job.tokens : 0;

    const std::vector<double> table = inv_table(inv);
    job.inv = table.data();
    job.half = int64_t(table.size());
    if (2 * job.half > job.head_dim)
        value_error("n_rot = " + std::to_string(2 * job.half) + " rotary dimensions exceed head_dim " +
                    std::to_string(job.head_dim));
    check_attn(attn);
    job.attn = float(attn);
    job.mode = mode;
    if (threads < 0 || threads > kMaxThreads)
        value_error("threads must be from 0 (automatic) to " + std::to_string(kMaxThreads) +
                    ", got " + std::to_string(threads));

    // x and out are not copied (that would double the memory traffic): another thread writing
    // them meanwhile can only change which float values are read or written, and the kernel
    // takes any float. Every address, count, stride and table it relies on was fixed above, and
    // this call's references keep both buffers alive (numpy refuses to resize a referenced array).
    job.src = static_cast<const char*>(x.data());
    job.dst = static_cast<char*>(out.mutable_data());
    {
        py::gil_scoped_release release;
        pyntk::rotate(job, threads);
    }
    return out;
}

py::tuple cos_sin(py::array positions, py::array inv, double attn) {
    const std::vector<int64_t> pos = positions_of(positions, 1);
    const std::vector<double> table = inv_table(inv);
    check_attn(attn);
    const int64_t n = int64_t(pos.size()), half = int64_t(table.size());
    py::array_t<float> cos({n, half}), sin({n, half});
    float* c = cos.mutable_data();
    float* s = sin.mutable_data();
    {
        py::gil_scoped_release release;
        pyntk::cos_sin(table.data(), half, float(attn), pos.data(), n, c, s);
    }
    return py::make_tuple(cos, sin);
}

py::dict cpu_features() {
    const pyntk::CpuFeatures& f = pyntk::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f;
    d["neon"] = f.neon;
    return d;
}

std::vector<std::string> kernels() {
    std::vector<std::string> names;
    for (const pyntk::Kernel* k : pyntk::available_kernels()) names.emplace_back(k->name);
    return names;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pyntk's C++ core: scaled RoPE frequencies and rotation kernels";

    py::enum_<pyntk::Method>(m, "Method")
        .value("none", pyntk::Method::none)
        .value("linear", pyntk::Method::linear)
        .value("ntk", pyntk::Method::ntk)
        .value("dynamic", pyntk::Method::dynamic)
        .value("ntk_by_parts", pyntk::Method::ntk_by_parts)
        .value("yarn", pyntk::Method::yarn)
        .value("llama3", pyntk::Method::llama3);

    m.def("inv_freq", &inv_freq, py::arg("method"), py::arg("dims"), py::arg("base"),
          py::arg("original_context"), py::arg("alpha"), py::arg("factor"), py::arg("beta_fast"),
          py::arg("beta_slow"), py::arg("attn_factor"), py::arg("low_freq_factor"),
          py::arg("high_freq_factor"), py::arg("seq_len"),
          "(inv_freq[dims/2] float64, attention factor) for one scaling; seq_len <= 0: unknown");

    py::enum_<pyntk::RopeMode>(m, "RopeMode")
        .value("normal", pyntk::RopeMode::normal)
        .value("neox", pyntk::RopeMode::neox);

    m.def("rotate", &rotate, py::arg("x").noconvert(), py::arg("positions").noconvert(),
          py::arg("inv_freq").noconvert(), py::arg("attn"), py::arg("mode"),
          py::arg("out").none(true), py::arg("threads"),
          "Rotates x [batch?, tokens, heads, head_dim] (float32/float16) by positions (int64 "
          "[tokens] or [batch, tokens]) with inv_freq [n_rot/2], cos/sin scaled by attn; into "
          "out, or in place when out is None. threads 0: automatic. Returns the result.");
    m.def("cos_sin", &cos_sin, py::arg("positions").noconvert(), py::arg("inv_freq").noconvert(),
          py::arg("attn"),
          "(cos, sin) float32 [len(positions), n_rot/2], both times attn, as the kernel uses them");
    m.attr("MAX_THREADS") = kMaxThreads;
    m.def("cpu_features", &cpu_features, "CPU features usable here (OS state checked)");
    m.def("kernels", &kernels, "Kernels this CPU can run, best first");
    m.def("kernel", [] { return std::string(pyntk::active_kernel().name); }, "The active kernel");
    m.def("set_kernel", [](const std::string& name) { pyntk::set_kernel(name); },
          py::arg("name"), "Makes the named kernel the active one");

    pyntk::kernel_from_environment();

    m.attr("__version__") = MACRO_STRINGIFY(VERSION_INFO);
}

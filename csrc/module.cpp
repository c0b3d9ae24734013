// Python bindings of the core. Every argument is checked here or in the callee;
// bad input raises a Python exception, never crashes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "freqs.h"

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

    m.attr("__version__") = MACRO_STRINGIFY(VERSION_INFO);
}

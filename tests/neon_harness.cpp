// Runs one rotation with the NEON kernel, for tests/test_neon_emulated.py, which builds this
// for aarch64 and runs it under qemu-user: the NEON kernel is otherwise never executed on
// the x86 machines that run the suite.
//
// Usage: neon_harness JOB OUT. JOB holds, little-endian: int64 tokens, heads, head_dim,
// half, mode (llama.cpp's number), f16 (0/1), threads; float64 attn; int64 positions
// [tokens]; float64 inv [half]; the input array. OUT receives the array rotated into a
// separate buffer, then the same rotated in place.
#include <cstdio>
#include <cstring>
#include <exception>
#include <vector>

#include "rotate.h"

namespace {

bool read_all(std::FILE* f, void* p, size_t bytes) { return std::fread(p, 1, bytes, f) == bytes; }

int run(const char* job_path, const char* out_path) {
    std::FILE* in = std::fopen(job_path, "rb");
    if (!in) return 2;
    int64_t h[7];
    double attn;
    if (!read_all(in, h, sizeof h) || !read_all(in, &attn, sizeof attn)) return 3;
    const int64_t tokens = h[0], heads = h[1], head_dim = h[2], half = h[3], threads = h[6];
    const size_t item = h[5] ? 2 : 4, bytes = size_t(tokens * heads * head_dim) * item;
    std::vector<int64_t> pos(static_cast<size_t>(tokens));
    std::vector<double> inv(static_cast<size_t>(half));
    std::vector<char> x(bytes), out(bytes);
    if (!read_all(in, pos.data(), pos.size() * 8) || !read_all(in, inv.data(), inv.size() * 8) ||
        !read_all(in, x.data(), bytes))
        return 3;
    std::fclose(in);

    pyntk::set_kernel("neon");
    pyntk::RotateJob job;
    job.src = x.data();
    job.dst = out.data();
    job.tokens = tokens;
    job.heads = heads;
    job.head_dim = head_dim;
    const int64_t strides[3] = {tokens * heads * head_dim * int64_t(item),
                                heads * head_dim * int64_t(item), head_dim * int64_t(item)};
    std::memcpy(job.src_stride, strides, sizeof strides);
    std::memcpy(job.dst_stride, strides, sizeof strides);
    job.pos = pos.data();
    job.inv = inv.data();
    job.half = half;
    job.attn = float(attn);
    job.mode = pyntk::RopeMode(h[4]);
    job.f16 = h[5] != 0;
    pyntk::rotate(job, int(threads));
    job.dst = x.data();
    job.src = x.data();
    pyntk::rotate(job, int(threads));

    std::FILE* o = std::fopen(out_path, "wb");
    if (!o || std::fwrite(out.data(), 1, bytes, o) != bytes ||
        std::fwrite(x.data(), 1, bytes, o) != bytes || std::fclose(o) != 0)
        return 4;
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s JOB OUT\n", argv[0]);
        return 2;
    }
    try {
        return run(argv[1], argv[2]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 5;
    }
}

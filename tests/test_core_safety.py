"""The core's two safety rules, on every kernel this CPU runs:

1. an output whose elements share memory (a zero stride, axes whose strides collide) is refused,
   since several threads, or one thread twice, would write the same bytes;
2. what the kernel reads after releasing the GIL (positions, the frequency table) is what was
   validated, even when another Python thread, or the rotation's own output, changes the caller's
   arrays meanwhile. Before the core copied them, a position flipped past 2^53 gave |cos| > 1.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

from pyntk import _core, reference, rope
from pyntk.scaling import RopeScaling

# float32 error of a rotated value, relative to its pair's length (as in test_rotate.py).
RELATIVE = 2e-6
SCALING = RopeScaling(dims=64)
BAD_POSITION = 2**60  # refused (past 2^53): the SIMD range reduction is meaningless there


def assert_matches(got, x, positions, scaling=SCALING):
    """got is x rotated by positions (neox) within float32 rounding of each pair's length: each
    pair keeps its length, and matches the float64 reference."""
    d, half = scaling.dims, scaling.dims // 2
    length = np.maximum(np.hypot(x[..., :half].astype(np.float64), x[..., half:d]), 1e-30)
    got_length = np.hypot(got[..., :half].astype(np.float64), got[..., half:d])
    error = np.abs(got.astype(np.float64) - reference.rotate(x, positions, scaling))
    error = np.maximum(error[..., :half], error[..., half:d])
    for what, off in (("a pair's length changed", np.abs(got_length - length)),
                      ("off the float64 reference", error)):
        if not (off <= RELATIVE * length).all():
            raise AssertionError(f"{what} by up to {np.max(off / length):.3g} of the pair's "
                                 f"length, tolerance {RELATIVE:g}")
    np.testing.assert_array_equal(got[..., d:], x[..., d:])


def writeable_view(shape, steps, dtype=np.float32):
    """(a writeable as_strided view with the given strides in items, its zeroed buffer), the
    buffer holding exactly the span the view reaches."""
    item = np.dtype(dtype).itemsize
    span = sum((n - 1) * abs(k) for n, k in zip(shape, steps)) + 1
    start = sum((n - 1) * -k for n, k in zip(shape, steps) if k < 0)
    buffer = np.zeros(span, dtype)
    return as_strided(buffer[start:], shape, [k * item for k in steps]), buffer


def shares_memory(shape, steps) -> bool:
    """Whether two distinct elements of the layout have the same offset, by listing them all."""
    offsets = sum(np.arange(n).reshape([-1] + [1] * (len(shape) - 1 - axis)) * k
                  for axis, (n, k) in enumerate(zip(shape, steps)))
    return np.unique(offsets).size < np.prod(shape)


# ---- an output whose elements share memory is refused ---------------------------------------

# (shape, strides in items, what the message names). Each shares memory, checked below by listing.
SELF_OVERLAPPING = [
    ((4, 2, 8), (0, 8, 1), "stride 0 on axis 0"),           # one token row for every token
    ((4, 2, 8), (16, 0, 1), "stride 0 on axis 1"),          # one head for every head
    ((2, 4, 2, 8), (0, 16, 8, 1), "stride 0 on axis 0"),    # one batch row for every batch
    ((4, 2, 8), (16, 4, 1), "axis 1's stride of 16 bytes is less than"),  # heads half a row apart
    ((4, 2, 8), (-8, 8, 1), "may overlap"),                 # token t's head 1 is token t-1's head 0
    ((3, 4, 8), (24, 16, 1), "may overlap"),                # token 0 head 3 is token 2 head 0
]


@pytest.mark.parametrize("shape, steps, names", SELF_OVERLAPPING)
def test_an_output_that_overlaps_itself_is_refused(shape, steps, names):
    assert shares_memory(shape, steps)
    x = np.ones(shape, np.float32)
    positions = np.arange(1, shape[-3] + 1)
    scaling = RopeScaling(dims=shape[-1])
    out, buffer = writeable_view(shape, steps)
    for threads in (1, 2):
        with pytest.raises(ValueError, match=r"^out (overlaps|may overlap) itself \(.*\); pass a "
                           r"contiguous array such as np\.empty\(x\.shape, x\.dtype\)$") as refused:
            rope.rotate(x, positions, scaling, out=out, threads=threads)
        assert names in str(refused.value)
        with pytest.raises(ValueError, match=r"^x (overlaps|may overlap) itself \(.*\), so it "
                           r"cannot be rotated in place; pass out=np\.empty\(x\.shape, x\.dtype\)$"):
            rope.rotate(out, positions, scaling, threads=threads)
    assert not buffer.any()  # refused before anything was written


def test_an_output_partly_overlapping_x_is_refused():
    buffer = np.ones((6, 2, 8), np.float32)
    x = buffer[:5]
    for out in (buffer[1:], buffer[4::-1]):  # one token on, and reversed
        with pytest.raises(ValueError, match="^out overlaps x; pass out=None"):
            rope.rotate(x, np.arange(5), RopeScaling(dims=8), out=out, threads=2)
    np.testing.assert_array_equal(buffer, 1)


def sliced_views():
    """Outputs numpy slicing makes: strided, reversed, transposed, with axes of one."""
    base = np.zeros((6, 5, 4, 3, 80), np.float32)
    yield base[::2, 1:4, 0, ::-1]                          # [3, 3, 3, 80]
    yield base[:, ::-1, 1, 2].transpose(1, 0, 2)           # [5, 6, 80], tokens reversed
    yield base[4:5, ::3, ::2, 1]                           # a batch of one
    yield base[:, 0, 0].transpose(1, 0, 2)[:1]             # one token
    yield as_strided(base.reshape(-1)[:240], (1, 3, 1, 80), (0, 320, 0, 4))  # stride 0, size 1


def test_outputs_numpy_slicing_makes_are_accepted(kernel, rng):
    for out in sliced_views():
        assert not shares_memory(out.shape, [s // 4 for s in out.strides])
        x = rng.standard_normal(out.shape).astype(np.float32)
        positions = rng.integers(0, 2**20, out.shape[-3])
        for threads in (1, 2):
            out[...] = np.nan
            rope.rotate(x, positions, SCALING, out=out, threads=threads)
            assert_matches(out, x, positions)


def test_a_broadcast_input_is_read_into_a_fresh_output(kernel, rng):
    # Reading one element for many is fine: only the output must not share memory.
    row = rng.standard_normal(64).astype(np.float32)
    x = np.broadcast_to(row, (9, 3, 64))
    positions = rng.integers(0, 2**20, 9)
    out = rope.rotate(x, positions, SCALING, out=np.empty(x.shape, x.dtype), threads=2)
    assert_matches(out, x, positions)


STEPS = st.sampled_from([0, 1, 2, 3, 5, 8, 11, 16, 24, 40, -1, -8, -16, -24])


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_layout_sharing_memory_is_refused(data):
    # Random writeable as_strided outputs: one that shares memory must be refused (listing its
    # elements decides that); one accepted must come out right and write nothing else.
    draw = data.draw
    head_dim = draw(st.sampled_from([2, 4, 8]))
    shape = [draw(st.integers(1, 4)) for _ in range(draw(st.sampled_from([2, 3])))] + [head_dim]
    steps = [draw(STEPS) for _ in shape[:-1]] + [1]
    out, buffer = writeable_view(shape, steps)
    overlapping = shares_memory(shape, steps)
    x = (np.arange(out.size, dtype=np.float32).reshape(shape) + 1) / out.size
    positions = np.arange(shape[-3]) * 7 + 1
    scaling = RopeScaling(dims=head_dim)
    try:
        rope.rotate(x, positions, scaling, out=out, threads=draw(st.sampled_from([1, 2])))
    except ValueError as e:
        assert "overlap" in str(e) and not buffer.any()
        # Deciding overlap exactly for interleaved strides is an integer program; the core
        # refuses those few as_strided layouts rather than search.
        event("refused: shares memory" if overlapping else "refused: axes interleave")
        return
    assert not overlapping, f"shape {shape}, strides {steps} items share memory, yet accepted"
    event("accepted")
    assert_matches(out, x, positions, scaling)
    out[...] = 0
    assert not buffer.any()  # the rotation wrote only out's own elements


# ---- what the kernel reads is what was validated ---------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_positions_in_the_output_memory_are_read_before_it_is_written(kernel, rng, threads):
    # Deterministic: positions live in the output's first rows, which the first tokens overwrite
    # before later tokens look up their positions. A core that reads the caller's positions after
    # checking them rotates the later tokens by whatever floats were written there.
    tokens, heads, head_dim = 256, 2, 64
    x = rng.standard_normal((tokens, heads, head_dim)).astype(np.float32)
    out = np.zeros_like(x)
    positions = out.reshape(-1)[: 2 * tokens].view(np.int64)  # rows 0-3 of out
    positions[:] = rng.integers(0, 2**20, tokens)
    given_positions = positions.copy()
    rope.rotate(x, positions, SCALING, out=out, threads=threads)
    assert_matches(out, x, given_positions)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_frequency_table_in_the_output_memory_is_read_before_it_is_written(kernel, rng, threads):
    # As above for the frequency table, which only the private core takes from its caller.
    tokens, heads, head_dim = 64, 2, 64
    x = rng.standard_normal((tokens, heads, head_dim)).astype(np.float32)
    positions = rng.integers(0, 2**20, tokens)
    out = np.zeros_like(x)
    inv, attention = rope.inv_freq(SCALING)
    table = out.reshape(-1)[: 2 * inv.size].view(np.float64)  # in token 0's row
    table[:] = inv
    _core.rotate(x, positions, table, attention, _core.RopeMode.neox, out, threads)
    assert_matches(out, x, positions)


def race(call, flip, check, seconds=1.0):
    """Calls call() again and again for `seconds` while another thread runs flip() without
    pause, and check()s every result: a call may refuse (it saw the bad value), never compute
    with it."""
    stop, flips = threading.Event(), [0]

    def flipper():
        while not stop.is_set():
            flip()
            flips[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, so flips land inside the calls
    worker = threading.Thread(target=flipper)
    worker.start()
    raced = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = flips[0]
            try:
                result = call()
            except ValueError as e:
                assert "2^53" in str(e) or "inv_freq" in str(e), e
                continue
            raced += flips[0] != before
            check(result)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    assert raced >= 5, f"only {raced} accepted calls overlapped a flip: the race was not tried"


def rotated_by(x, positions):
    """A check that a result is x rotated by positions, quick for the many right ones."""
    expected = reference.rotate(x, positions, SCALING).astype(np.float32)
    half = SCALING.dims // 2
    length = np.hypot(x[..., :half].astype(np.float64), x[..., half:])
    bound = (np.concatenate([length, length], axis=-1) * RELATIVE).astype(np.float32)

    def check(got):
        if not (np.abs(got - expected) <= bound).all():  # float32, so it may err: then look closer
            assert_matches(got, x, positions)

    return check


RACE_SHAPE = (2048, 8, 64)


@pytest.mark.parametrize("threads", [1, 2])
def test_positions_changed_by_another_thread_during_rotate(kernel, rng, threads):
    # The last token of each half (what each of two workers reads last) flips between its valid
    # position and 2^60, refused when seen. Every accepted call must rotate by the valid ones.
    # Single-element stores: a bulk copy releases the GIL and may be read half done.
    x = rng.standard_normal(RACE_SHAPE).astype(np.float32)
    valid = rng.integers(0, 2**20, len(x))
    positions = valid.copy()
    out = np.empty_like(x)
    a, b = len(x) // 2 - 1, len(x) - 1

    def flip():
        positions[a] = positions[b] = BAD_POSITION
        positions[a], positions[b] = valid[a], valid[b]

    check = rotated_by(x[[a, b]], valid[[a, b]])  # the only rows that can go wrong
    race(lambda: rope.rotate(x, positions, SCALING, out=out, threads=threads), flip,
         lambda got: check(got[[a, b]]))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_frequency_changed_by_another_thread_during_rotate(kernel, rng, threads):
    # The lowest frequency flips between its value and 1e30 (refused when seen: a table lies in
    # [0, 1]); every token reads it.
    x = rng.standard_normal(RACE_SHAPE).astype(np.float32)
    positions = rng.integers(0, 2**20, len(x))
    inv, attention = rope.inv_freq(SCALING)
    valid = inv[-1]
    out = np.empty_like(x)

    def flip():
        inv[-1] = 1e30
        inv[-1] = valid

    race(lambda: _core.rotate(x, positions, inv, attention, _core.RopeMode.neox, out, threads),
         flip, rotated_by(x, positions))


def test_a_position_changed_by_another_thread_during_cos_sin(kernel, rng):
    # As above: the last position, which cos_sin reads last.
    valid = rng.integers(0, 2**20, 16384)
    positions = valid.copy()
    expected = [e.astype(np.float32) for e in reference.cos_sin(SCALING, valid)]

    def flip():
        positions[-1] = BAD_POSITION
        positions[-1] = valid[-1]

    def check(cos_sin):
        cos, sin = cos_sin
        if not all((np.abs(got - e) <= RELATIVE).all() for got, e in zip(cos_sin, expected)):
            # |cos| > 1 was how a position past 2^53 showed; the reference says any other way
            np.testing.assert_allclose(np.hypot(cos, sin.astype(np.float64)), 1, rtol=0,
                                       atol=RELATIVE)
            for got, e in zip(cos_sin, reference.cos_sin(SCALING, valid)):
                np.testing.assert_allclose(got, e, rtol=0, atol=RELATIVE)

    race(lambda: rope.cos_sin(positions, SCALING), flip, check)

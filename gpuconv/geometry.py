"""Problem geometry: output sizes, padding splits, legal transposed shapes, implicit-GEMM sizes.

Pure integers, no arrays. Every backend (NumPy, CUDA, emulator) and every launch plan reads the problem records
built here; nothing else computes an output size or a padding. Problems are immutable and conv_problem /
pool_problem keep the last few hundred they built (a repeated call costs a dictionary lookup, not the checks).

Canonical layout (channels-last, always 3 spatial dimensions; 2-D is 3-D with depth 1):
    x  (N, D, H, W, C)        input
    w  (T, R, S, C // G, K)   filters (TF's DHWIO)
    y  (N, Z, P, Q, K)        output
Pooling uses the same letters with window (T, R, S) and K = C.

Source of the rules: tensorflow/core/framework/kernel_shape_util.cc (GetWindowedOutputSizeVerbose) and
tensorflow/core/kernels/conv_grad_shape_utils.cc (ConvBackpropExtractAndVerifyDimension).
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Sequence, Union

from ._args import INT32_MAX, fail

Triple = tuple[int, int, int]
# Padding after normalisation: "SAME", "VALID" or explicit (before, after) pairs, one per spatial dimension.
Padding = Union[str, tuple[tuple[int, int], ...]]

INT32_LIMIT = 2**31
# Every tensor of a problem has fewer elements than this, so that its size in bytes (8-byte values at most) and
# every flat index (argmax, the kernels' 64-bit index type) fit in int64. Anything smaller can be allocated in
# principle; where memory is short NumPy / CuPy raise their MemoryError naming the size.
ELEMENT_LIMIT = 2**60


def _trunc_div(a: int, b: int) -> int:
    """C++ integer division (truncates toward zero), as TF's size formula uses it."""
    q = abs(a) // b
    return q if a >= 0 else -q


def effective_size(k: int, d: int) -> int:
    """Extent of a dilated window: (k - 1) * d + 1."""
    return (k - 1) * d + 1


def axis_geometry(n: int, k: int, s: int, d: int, padding, axis: str = "spatial",
                  input_arg: str = "input") -> tuple[int, int, int]:
    """Output size and (pad_before, pad_after) of one spatial axis, TF's rule exactly.

    VALID: out = (n - e + s) / s; SAME: out = ceil(n / s) with total pad max(0, (out-1)*s + e - n), the odd
    cell at the end; explicit (pb, pa): out = (n + pb + pa - e + s) / s. Division truncates as in C++. A
    negative size is a ValueError naming input_arg (the argument that gave n); zero is allowed (an empty
    result). Explicit pads that would make the output longer than both the input and INT32_MAX are a ValueError
    (extents, like pads, must fit in a C++ int).
    """
    e = effective_size(k, d)
    if padding == "SAME":
        out = (n + s - 1) // s
        total = max(0, (out - 1) * s + e - n)
        pb, pa = total // 2, total - total // 2
    elif padding == "VALID":
        pb = pa = 0
        out = _trunc_div(n - e + s, s)
    else:
        pb, pa = padding
        out = _trunc_div(n + pb + pa - e + s, s)
    if out < 0:
        dilated = f", dilation {d}" if d != 1 else ""
        fail(input_arg, f"an input at least as large as the window along {axis} "
             f"(window extent {e}{dilated}, padding {pb}+{pa})",
             f"input size {n}: computed output size would be negative ({out})")
    if out > max(n, INT32_MAX):
        fail("padding", f"pads giving an output size <= {INT32_MAX} along {axis} (input size {n}, window "
             f"extent {e}, stride {s})", f"padding {pb}+{pa}: output size {out}")
    return out, pb, pa


def transposed_output_range(i: int, k: int, s: int, d: int, padding) -> tuple[int, int]:
    """The output sizes O (inclusive range) whose forward conv has size i: the legal transposed output_shape.

    SAME: [(i-1)s+1, i*s]; VALID: [(i-1)s+e, (i-1)s+e+s-1]; explicit (pb, pa): the VALID range shifted by -(pb+pa).
    For i = 0 (not SAME) the range starts s - 1 lower: TF's size (O - e + s) / s truncates toward zero, so every
    O - e + s in (-s, s) gives 0. Sizes below 0 are cut off.
    """
    e = effective_size(k, d)
    if padding == "SAME":
        lo, hi = (i - 1) * s + 1, i * s
    else:
        pb, pa = (0, 0) if padding == "VALID" else padding
        lo = (i - 1) * s + e - pb - pa
        hi = lo + s - 1
        if i == 0:
            lo -= s - 1
    return max(lo, 0), hi


@dataclass(frozen=True)
class ConvProblem:
    """A convolution in canonical form: x (N,D,H,W,C) * w (T,R,S,C/G,K) -> y (N,Z,P,Q,K)."""

    N: int
    D: int
    H: int
    W: int
    C: int
    K: int
    T: int
    R: int
    S: int
    Z: int
    P: int
    Q: int
    stride: Triple
    dilation: Triple
    pad_before: Triple
    pad_after: Triple
    groups: int = 1
    # needs_int64(), computed once: launch planning asks several times per call.
    _int64: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_int64", _any_past_int32(self.x_shape, self.w_shape, self.y_shape))

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.N, self.D, self.H, self.W, self.C)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.T, self.R, self.S, self.C // self.groups, self.K)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.N, self.Z, self.P, self.Q, self.K)

    @property
    def group_c(self) -> int:
        """Input channels per group (the filters' in-channel extent)."""
        return self.C // self.groups

    @property
    def group_k(self) -> int:
        """Output channels per group."""
        return self.K // self.groups

    @property
    def is_empty(self) -> bool:
        return 0 in self.x_shape or 0 in self.y_shape or 0 in self.w_shape

    def tap_offset(self, tap) -> tuple[int, ...]:
        """Per spatial axis, the input offset of filter tap (t, r, s): output o reads input o * stride + offset."""
        return tuple(k * d - b for k, d, b in zip(tap, self.dilation, self.pad_before))

    def needs_int64(self) -> bool:
        """True when some tensor of the problem has >= 2^31 elements (kernels then index in 64 bits)."""
        return self._int64

    def gemm_size(self, operator: str) -> tuple[int, int, int]:
        """Implicit-GEMM (gemm_m, gemm_n, gemm_k) of one group for operator fprop, dgrad or wgrad."""
        taps = self.T * self.R * self.S
        if operator == "fprop":
            return self.N * self.Z * self.P * self.Q, self.group_k, self.group_c * taps
        if operator == "dgrad":
            return self.N * self.D * self.H * self.W, self.group_c, self.group_k * taps
        if operator == "wgrad":
            return self.group_k, self.group_c * taps, self.N * self.Z * self.P * self.Q
        raise ValueError(f"operator must be 'fprop', 'dgrad' or 'wgrad', got {operator!r}")

    def flops(self, operator: str = "fprop") -> int:
        """Multiply-adds x 2 over all groups of operator's implicit GEMM (gemm_size): fprop and wgrad count
        the same; dgrad counts every tap at every dx cell, more with stride > 1 or VALID padding (benchmarks
        count fprop's for every operator)."""
        m, n, k = self.gemm_size(operator)
        return 2 * m * n * k * self.groups


@dataclass(frozen=True)
class PoolProblem:
    """A pooling window sweep in canonical form: x (N,D,H,W,C) -> y (N,Z,P,Q,C), window (T,R,S)."""

    N: int
    D: int
    H: int
    W: int
    C: int
    T: int
    R: int
    S: int
    Z: int
    P: int
    Q: int
    stride: Triple
    pad_before: Triple
    pad_after: Triple
    # needs_int64(), computed once: launch planning asks several times per call.
    _int64: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_int64", _any_past_int32(self.x_shape, self.y_shape))

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.N, self.D, self.H, self.W, self.C)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.N, self.Z, self.P, self.Q, self.C)

    @property
    def window(self) -> Triple:
        return (self.T, self.R, self.S)

    @property
    def is_empty(self) -> bool:
        return 0 in self.x_shape or 0 in self.y_shape

    def needs_int64(self) -> bool:
        """True when x or y has >= 2^31 elements, or an argmax with batch offset could reach 2^31."""
        return self._int64


def _any_past_int32(*shapes: Sequence[int]) -> bool:
    """Whether some shape has >= 2^31 elements: the problems' needs_int64()."""
    return any(_prod(s) >= INT32_LIMIT for s in shapes)


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for v in shape:
        out *= int(v)
    return out


_AXES = ("depth", "height", "width")


def check_elements(shape: Sequence[int], arg: str, what: str) -> None:
    """A tensor shape with fewer than ELEMENT_LIMIT elements, else a ValueError naming arg."""
    if _prod(shape) >= ELEMENT_LIMIT:
        fail(arg, f"{what} with fewer than 2^60 elements (sizes in bytes and indices are int64)",
             f"{_prod(shape)} elements (canonical shape {tuple(int(v) for v in shape)})")


def _key(values):
    """A str, or a sequence of integers or of integer pairs (lists, tuples, arrays), as nested tuples of Python
    ints: the builders' cache key, so that equal arguments of other types (NumPy integers) share one record of
    plain ints. A non-integer value is a TypeError (operator.index)."""
    if isinstance(values, str):
        return values
    return tuple(_key(v) if hasattr(v, "__iter__") else operator.index(v) for v in values)


def conv_problem(x_shape: Sequence[int], w_shape: Sequence[int], stride: Triple, dilation: Triple,
                 padding: Padding, input_arg: str = "input", filter_arg: str = "filters") -> ConvProblem:
    """Build the canonical problem of a forward conv from canonical x and w shapes.

    Checks the channel and group rule (C = G * w_in, K divisible by G), that no output size is negative and that
    every tensor has fewer than 2^60 elements. input_arg / filter_arg: the arguments that gave x's and w's shapes
    (e.g. input_sizes, filter_sizes), named in the errors.
    """
    return _conv_problem(_key(x_shape), _key(w_shape), _key(stride), _key(dilation), _key(padding), input_arg,
                         filter_arg)


@functools.lru_cache(maxsize=256)
def _conv_problem(x_shape: tuple, w_shape: tuple, stride: tuple, dilation: tuple, padding, input_arg: str,
                  filter_arg: str) -> ConvProblem:
    N, D, H, W, C = (int(v) for v in x_shape)
    T, R, S, Cg, K = (int(v) for v in w_shape)
    if Cg <= 0:
        fail(filter_arg, "a positive in-channel extent", f"filter shape with in-channels {Cg}")
    if min(T, R, S) <= 0:
        # A zero-extent window has effective size 0 and would give an output larger than the input (TF refuses
        # filters with zero elements).
        fail(filter_arg, "positive window extents", f"a zero extent in the canonical window (depth, height, width) "
             f"{(T, R, S)} (2-D filters have depth 1)")
    if C == 0:
        # groups = C / Cg would be 0 (TF's own check divides by it).
        fail(input_arg, "at least one channel (input channels = groups x filter in-channels)",
             f"{input_arg} with 0 channels")
    if C % Cg != 0:
        fail(filter_arg, f"in-channels dividing the channel count {C} of {input_arg} (grouped convolution: "
             f"input channels = groups x filter in-channels)", f"filter in-channels {Cg}")
    groups = C // Cg
    if K % groups != 0:
        fail(filter_arg, f"out-channels divisible by the number of groups {groups}", f"out-channels {K}")
    out, pb, pa = [], [], []
    for ax, (n, k, s, d) in enumerate(zip((D, H, W), (T, R, S), stride, dilation)):
        pad = padding if isinstance(padding, str) else padding[ax]
        o, b, a = axis_geometry(n, k, s, d, pad, _AXES[ax], input_arg)
        out.append(o)
        pb.append(b)
        pa.append(a)
    p = ConvProblem(N, D, H, W, C, K, T, R, S, out[0], out[1], out[2],
                    tuple(stride), tuple(dilation), tuple(pb), tuple(pa), groups)
    check_elements(p.x_shape, input_arg, "an input")
    check_elements(p.w_shape, filter_arg, "filters")
    check_elements(p.y_shape, f"{input_arg}, {filter_arg}, padding", "an output")
    return p


def check_backprop_output(p: ConvProblem, dy_shape: Sequence[int], padding: Padding, shape_arg: str,
                          filter_arg: str = "filters") -> None:
    """Check that out_backprop / the transposed input has the forward output size of p.

    shape_arg names the argument that fixed the larger tensor's size (input_sizes or output_shape); for a
    spatial mismatch the message gives the legal range of that argument, which TF never prints.
    """
    N, Z, P, Q, K = (int(v) for v in dy_shape)
    if N != p.N:
        fail(shape_arg, f"batch {N} (the batch of the gradient/input tensor)", f"batch {p.N}")
    if K != p.K:
        fail(filter_arg, f"out-channels equal to the gradient/input tensor's channels {K}", f"{p.K}")
    sizes = (p.D, p.H, p.W)
    kernel = (p.T, p.R, p.S)
    for ax, (got, want) in enumerate(zip((Z, P, Q), (p.Z, p.P, p.Q))):
        if got != want:
            pad = padding if isinstance(padding, str) else tuple(padding[ax])
            lo, hi = transposed_output_range(got, kernel[ax], p.stride[ax], p.dilation[ax], pad)
            how = f"(stride {p.stride[ax]}, filter {kernel[ax]}, dilation {p.dilation[ax]}, padding {pad})"
            if lo > hi:
                # No size works: the pads alone make every forward size larger than the one given.
                smallest = axis_geometry(0, kernel[ax], p.stride[ax], p.dilation[ax], pad)[0]
                fail(shape_arg, f"a {_AXES[ax]} whose forward convolution gives the gradient/input size {got}, "
                     f"but none exists {how}: even {_AXES[ax]} 0 gives {smallest}; smaller pads or a larger "
                     f"gradient/input fix it", f"{_AXES[ax]} {sizes[ax]}, whose forward size is {want}")
            fail(shape_arg, f"{_AXES[ax]} in [{lo}, {hi}] so that the forward convolution gives the "
                 f"gradient/input size {got} {how}", f"{_AXES[ax]} {sizes[ax]}, whose forward size is {want}")


def pool_problem(x_shape: Sequence[int], window: Triple, stride: Triple, padding: Padding,
                 input_arg: str = "input") -> PoolProblem:
    """Build the canonical problem of a pooling op from the canonical input shape (given by input_arg)."""
    return _pool_problem(_key(x_shape), _key(window), _key(stride), _key(padding), input_arg)


@functools.lru_cache(maxsize=256)
def _pool_problem(x_shape: tuple, window: tuple, stride: tuple, padding, input_arg: str) -> PoolProblem:
    N, D, H, W, C = (int(v) for v in x_shape)
    out, pb, pa = [], [], []
    for ax, (n, k, s) in enumerate(zip((D, H, W), window, stride)):
        pad = padding if isinstance(padding, str) else padding[ax]
        if not isinstance(pad, str) and max(pad) >= k:
            # TF (pooling_ops_common.cc) refuses pads >= window: such a window could hold only padding.
            fail("padding", f"explicit pads smaller than the window ({k}) along {_AXES[ax]}", f"{pad}")
        o, b, a = axis_geometry(n, k, s, 1, pad, _AXES[ax], input_arg)
        if n == 0 and o > 0:
            fail(input_arg, f"a non-empty {_AXES[ax]} (every pooling window must hold an input cell)",
                 f"{_AXES[ax]} 0 with padding {pad}")
        out.append(o)
        pb.append(b)
        pa.append(a)
    p = PoolProblem(N, D, H, W, C, *window, out[0], out[1], out[2], tuple(stride), tuple(pb), tuple(pa))
    check_elements(p.x_shape, input_arg, "an input")
    check_elements(p.y_shape, f"{input_arg}, padding", "an output")
    return p

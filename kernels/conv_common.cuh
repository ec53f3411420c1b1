// gpuconv convolution helpers shared by the conv families (conv_fprop.cu, conv_dgrad.cu, conv_wgrad.cu).
//
// What lives here (CUTLASS vocabulary):
//   * ConvProblemSize<Index>   the canonical problem, built once per thread from the kernel's scalar
//                              parameters and passed by value to the tile iterators;
//   * GPUCONV_CONV_PROBLEM_PARAMS / GPUCONV_CONV_PROBLEM_ARGS   the one kernel parameter list of a problem
//                              (its order is mirrored by gpuconv/plans/conv_common.py:problem_scalars);
//     GPUCONV_CONV_PROBLEM_LOCALS   the problem as int locals with the index formulas' short names;
//   * border predicates        in_bounds(): "is this coordinate inside x" (zero fill outside);
//   * vector access            Vec<Element, V>: V-element global loads / stores (128-bit for float x4,
//                              double x2; 64-bit for half x4) and shared-memory fragment reads;
//   * mac()                    the one multiply-accumulate every conv kernel uses (an explicit fused
//                              multiply-add, so the GPU and the CPU emulator round identically);
//   * SmemCast<S>              how an element enters a shared-memory tile of type S;
//   * SIMT implicit GEMM       SimtThreadTile (a thread's register tile, its warp-level main-loop step
//                              mma_stage and the rows / columns the epilogue writes), pipelined_main_loop
//                              (the double-buffered global -> registers -> shared loop of every tiled kernel,
//                              tensor-op included) and simt16x16 (the block shape of dgrad's and wgrad's tiled
//                              kernels);
//   * conv_nonfinite_flag      sets *flag when an operand holds inf or NaN: the tiled kernels then compute
//                              their tiles by the analytic formula, in which absent taps never multiply;
//   * nvcuda::wmma (emulator)  the WMMA subset tensor-op kernels use, for the CPU emulator only;
//   * TensorOpMath, tensorop_stage   how the tensor-op kernels multiply a shared-memory stage on tensor cores
//                              (half; TF32 and 3xTF32 for opt-in float32); simt16x16::BackpropStage and
//                              TensorOpWarpTile, the shared-memory stages of the backprop kernels and the warp
//                              tiles, main-loop step and epilogue of their tensor-op variants.
//
// Canonical layout (channels-last, always three spatial dimensions; 2-D is depth 1):
//   x (N, D, H, W, C)    w (T, R, S, C/G, K)    y (N, Z, P, Q, K)
// NVRTC-clean: no <cstdint>/<cmath>. Under the emulator GPUCONV_EMULATOR is defined.
//
// Launch bounds: every kernel's __launch_bounds__ names an explicit minimum of resident blocks per SM,
// __launch_bounds__(threads, min_blocks). With a bare __launch_bounds__(threads), NVRTC 13.5's ptxas picks its
// own register cap and spills (conv_fprop_analytic, conv_fprop_tensorop and the tiled backprop kernels all did),
// which fails the compile gate (`python -m gpuconv check-kernels`: zero spills on sm_80 and sm_90). Choose
// min_blocks so that 65536 / (threads * min_blocks) registers hold the kernel's live state, and say why above
// the kernel.
#pragma once
#include "common.cuh"
#ifndef GPUCONV_EMULATOR
#include <mma.h>
#endif

namespace gpuconv {

// =========================================================================================================
// Problem size
// =========================================================================================================

// The kernel parameter list of a convolution problem, in this order (Index = int or long long):
//   N D H W C   K   T R S   Z P Q   stride_d stride_h stride_w   dilation_d dilation_h dilation_w
//   pad_d pad_h pad_w   groups
// Each extent, stride, dilation and pad fits in int (geometry guarantees it); Index is the type of the
// flat offsets and GEMM extents, 64-bit when some tensor has >= 2^31 elements.
#define GPUCONV_CONV_PROBLEM_PARAMS(Index)                                                                   \
    Index N, Index D, Index H, Index W, Index C, Index K, Index T, Index R, Index S, Index Z, Index P,        \
        Index Q, Index stride_d, Index stride_h, Index stride_w, Index dilation_d, Index dilation_h,         \
        Index dilation_w, Index pad_d, Index pad_h, Index pad_w, Index groups
#define GPUCONV_CONV_PROBLEM_ARGS                                                                            \
    N, D, H, W, C, K, T, R, S, Z, P, Q, stride_d, stride_h, stride_w, dilation_d, dilation_h, dilation_w,    \
        pad_d, pad_h, pad_w, groups

// The problem's extents as int locals with the short names of the index formulas, for a ConvProblemSize pr
// (they shadow the Index-typed kernel parameters): N..Q, sd sh sw (strides), dil_d dil_h dil_w (dilations),
// pd ph pw (pads before), Cg = C/G, Kg = K/G.
#define GPUCONV_CONV_PROBLEM_LOCALS(pr)                                                                      \
    const int N = pr.N, D = pr.D, H = pr.H, W = pr.W, C = pr.C, K = pr.K, T = pr.T, R = pr.R, S = pr.S;      \
    const int Z = pr.Z, P = pr.P, Q = pr.Q;                                                                  \
    const int sd = pr.stride_d, sh = pr.stride_h, sw = pr.stride_w;                                          \
    const int dil_d = pr.dilation_d, dil_h = pr.dilation_h, dil_w = pr.dilation_w;                           \
    const int pd = pr.pad_d, ph = pr.pad_h, pw = pr.pad_w;                                                   \
    const int Cg = pr.group_c, Kg = pr.group_k;                                                              \
    (void)N; (void)D; (void)H; (void)W; (void)C; (void)K; (void)T; (void)R; (void)S; (void)Z; (void)P;       \
    (void)Q; (void)sd; (void)sh; (void)sw; (void)dil_d; (void)dil_h; (void)dil_w; (void)pd; (void)ph;        \
    (void)pw; (void)Cg; (void)Kg

template <typename Index>
struct ConvProblemSize {
    int N, D, H, W, C, K, T, R, S, Z, P, Q;
    int stride_d, stride_h, stride_w;
    int dilation_d, dilation_h, dilation_w;
    int pad_d, pad_h, pad_w;
    int groups;
    int group_c;  // C / groups: the filters' in-channel extent
    int group_k;  // K / groups

    __device__ __forceinline__ ConvProblemSize(GPUCONV_CONV_PROBLEM_PARAMS(Index))
        : N(int(N)), D(int(D)), H(int(H)), W(int(W)), C(int(C)), K(int(K)), T(int(T)), R(int(R)), S(int(S)),
          Z(int(Z)), P(int(P)), Q(int(Q)), stride_d(int(stride_d)), stride_h(int(stride_h)),
          stride_w(int(stride_w)), dilation_d(int(dilation_d)), dilation_h(int(dilation_h)),
          dilation_w(int(dilation_w)), pad_d(int(pad_d)), pad_h(int(pad_h)), pad_w(int(pad_w)),
          groups(int(groups)), group_c(int(C / groups)), group_k(int(K / groups)) {}

    // Implicit GEMM of one group, fprop: gemm_m = N*Z*P*Q (output pixels), gemm_n = K/G (output channels),
    // gemm_k = T*R*S*C/G (filter taps x input channels, channel innermost, the order of w's rows).
    __device__ __forceinline__ Index fprop_gemm_m() const { return Index(N) * Z * P * Q; }
    __device__ __forceinline__ int fprop_gemm_n() const { return group_k; }
    __device__ __forceinline__ int fprop_gemm_k() const { return T * R * S * group_c; }
    __device__ __forceinline__ Index x_image_stride() const { return Index(D) * H * W * C; }
};

// Output pixel m = ((n*Z + z)*P + p)*Q + q of the fprop GEMM, as the corner of its input window:
// (n, z*stride_d - pad_d, p*stride_h - pad_h, q*stride_w - pad_w).
struct WindowOrigin {
    int n, d, h, w;
};

template <typename Index>
__device__ __forceinline__ WindowOrigin fprop_window_origin(const ConvProblemSize<Index>& p, Index m) {
    WindowOrigin o;
    const int q = int(m % p.Q);
    m /= p.Q;
    const int pp = int(m % p.P);
    m /= p.P;
    const int z = int(m % p.Z);
    o.n = int(m / p.Z);
    o.d = z * p.stride_d - p.pad_d;
    o.h = pp * p.stride_h - p.pad_h;
    o.w = q * p.stride_w - p.pad_w;
    return o;
}

// =========================================================================================================
// Border predicates
// =========================================================================================================

// True when (d, h, w) is a cell of x; outside it the convolution reads zero (the padding).
template <typename Index>
__device__ __forceinline__ bool in_bounds(const ConvProblemSize<Index>& p, int d, int h, int w) {
    return unsigned(d) < unsigned(p.D) && unsigned(h) < unsigned(p.H) && unsigned(w) < unsigned(p.W);
}

// A coordinate that no in_bounds() test accepts even after adding any filter offset: marks a GEMM row
// past gemm_m, so the row predicate needs no register of its own.
constexpr int kInvalidCoord = -(1 << 29);

// =========================================================================================================
// Multiply-accumulate
// =========================================================================================================

// acc + a * b rounded once (fused), on the GPU and in the emulator. For float the GPU also flushes subnormal
// operands and results to zero (CuPy compiles with -ftz=true: fma.rn.ftz.f32), the emulator does not, so the
// two agree bit for bit except where a subnormal float appears (README "GPU calls").
__device__ __forceinline__ float mac(float a, float b, float acc) { return fmaf(a, b, acc); }
__device__ __forceinline__ double mac(double a, double b, double acc) { return fma(a, b, acc); }

// =========================================================================================================
// Vector access
// =========================================================================================================

// V consecutive elements of one tensor. load() reads them from global memory through the read-only path
// with one instruction where the width allows (the pointer must be aligned to V elements); store() writes
// V accumulators converted to Element. The generic version is element-wise.
template <typename Element, int V>
struct Vec {
    static __device__ __forceinline__ void load(const Element* p, Element (&v)[V]) {
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] = __ldg(p + i);
    }
    static __device__ __forceinline__ void store(Element* p, const typename Accum<Element>::type* v) {
#pragma unroll
        for (int i = 0; i < V; ++i) p[i] = from_accum<Element>(v[i]);
    }
};

template <>
struct Vec<float, 4> {
    static __device__ __forceinline__ void load(const float* p, float (&v)[4]) {
        const float4 t = __ldg(reinterpret_cast<const float4*>(p));
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    }
    static __device__ __forceinline__ void store(float* p, const float* v) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
};

template <>
struct Vec<double, 2> {
    static __device__ __forceinline__ void load(const double* p, double (&v)[2]) {
        const double2 t = __ldg(reinterpret_cast<const double2*>(p));
        v[0] = t.x; v[1] = t.y;
    }
    static __device__ __forceinline__ void store(double* p, const double* v) {
        *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
    }
};

// Four halves move as one 64-bit word; the union reinterprets the word's bits as the four halves.
union Halfx4 {
    uint2 word;
    unsigned short bits[4];
};

template <>
struct Vec<__half, 4> {
    static __device__ __forceinline__ void load(const __half* p, __half (&v)[4]) {
        Halfx4 t;
        t.word = __ldg(reinterpret_cast<const uint2*>(p));
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = __ushort_as_half(t.bits[i]);
    }
    static __device__ __forceinline__ void store(__half* p, const float* v) {
        Halfx4 t;
#pragma unroll
        for (int i = 0; i < 4; ++i) t.bits[i] = __half_as_ushort(__float2half_rn(v[i]));
        *reinterpret_cast<uint2*>(p) = t.word;
    }
};

// An element as stored in a shared-memory tile of type S: converted to the accumulator type for SIMT tiles
// (half -> float once, at the store, not at every use), unchanged for tensor-op tiles of the element type.
template <typename S>
struct SmemCast {
    template <typename Element>
    static __device__ __forceinline__ S apply(Element v) { return S(to_accum(v)); }
};
template <>
struct SmemCast<__half> {
    static __device__ __forceinline__ __half apply(__half v) { return v; }
};

// Zero of any element type (a half zero is built from a float zero).
template <typename Element>
__device__ __forceinline__ Element zero_element() { return from_accum<Element>(typename Accum<Element>::type(0)); }

// Four consecutive accumulators from shared memory (16-byte aligned for float, 32-byte for double):
// one 128-bit read for float, two for double.
__device__ __forceinline__ void load_fragment4(const float* s, float* v) {
    const float4 t = *reinterpret_cast<const float4*>(s);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void load_fragment4(const double* s, double* v) {
    const double2 a = *reinterpret_cast<const double2*>(s);
    const double2 b = *reinterpret_cast<const double2*>(s + 2);
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}

// =========================================================================================================
// SIMT implicit GEMM: thread tile, warp-level main-loop step, pipelined main loop
// =========================================================================================================

// The register tile of one thread of a SIMT implicit-GEMM kernel (conv_fprop_tiled, conv_dgrad_tiled,
// conv_wgrad_tiled): TM x TN accumulators made of (TM/4) x (TN/4) sub-tiles of 4 x 4, spread kSpacingM =
// BM/(TM/4) rows and kSpacingN = BN/(TN/4) columns of the BM x BN block tile apart. Thread (ty, tx) owns
//   rows    row(i, ty) = (i/4)*kSpacingM + ty*4 + i%4,   i < TM
//   columns col(j, tx) = (j/4)*kSpacingN + tx*4 + j%4,   j < TN
// so each 4-wide fragment read from shared memory is one 128-bit access (two for double), broadcast or
// conflict free across a warp whose lanes hold consecutive ty or tx. The epilogues write the same rows and
// columns.
template <int BM, int BN, int TM, int TN>
struct SimtThreadTile {
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register tiles are made of 4 x 4 sub-tiles");
    static_assert(BM % TM == 0 && BN % TN == 0, "thread tile does not divide the block tile");
    static constexpr int kSpacingM = BM / (TM / 4), kSpacingN = BN / (TN / 4);

    static __device__ __forceinline__ int row(int i, int ty) { return (i / 4) * kSpacingM + ty * 4 + (i % 4); }
    static __device__ __forceinline__ int col(int j, int tx) { return (j / 4) * kSpacingN + tx * 4 + (j % 4); }

    template <typename Acc>
    static __device__ __forceinline__ void clear(Acc (&acc)[TM][TN]) {
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);
    }

    // Warp-level main-loop step over one shared-memory stage:
    //   acc[i][j] = mac(A[kk][row(i)], B[kk][col(j)], acc[i][j])   for kk = 0 .. BK-1 in order
    // A is k-major (sa[kk*kStrideA + m]), B is sb[kk*kStrideB + n]; one fused multiply-add per term, so the sum
    // order is gemm_k ascending, the analytic kernels' order.
    template <int BK, int kStrideA, int kStrideB, typename Acc>
    static __device__ __forceinline__ void mma_stage(Acc (&acc)[TM][TN], const Acc* sa, const Acc* sb, int ty,
                                                     int tx) {
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            Acc a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; i += 4) load_fragment4(sa + kk * kStrideA + row(i, ty), a + i);
#pragma unroll
            for (int j = 0; j < TN; j += 4) load_fragment4(sb + kk * kStrideB + col(j, tx), b + j);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = mac(a[i], b[j], acc[i][j]);
        }
    }
};

// The double-buffered main loop of every implicit-GEMM kernel (CUTLASS's pipelined Mma, two shared-memory
// stages): k-tile 0 travels global -> registers -> stage 0; then, for k-tile kt, k-tile kt + 1 travels global ->
// registers while stage kt % 2 is multiplied, and is stored to the other stage, which was last read in
// iteration kt - 1 (that iteration ended with a barrier). The steps are the kernel's:
//   load_first()     k-tile 0 of both operands, global -> registers
//   load_next()      advance the tile iterators by one k-tile, global -> registers
//   store(stage)     registers -> shared-memory stage (0 or 1)
//   compute(stage)   the warp-level steps over one stage
// k_tiles >= 1 and block-uniform (every thread reaches every barrier). A kernel whose gemm_k range can be
// empty guards the call (a guard inside would cost the tensor-op kernel 14 registers on sm_90).
template <typename LoadFirst, typename LoadNext, typename Store, typename Compute>
__device__ __forceinline__ void pipelined_main_loop(int k_tiles, LoadFirst&& load_first, LoadNext&& load_next,
                                                    Store&& store, Compute&& compute) {
    load_first();
    store(0);
    __syncthreads();
    for (int kt = 0; kt < k_tiles; ++kt) {
        const int stage = kt & 1;
        const bool has_next = kt + 1 < k_tiles;  // uniform across the block
        if (has_next) load_next();
        compute(stage);
        if (has_next) store(stage ^ 1);
        __syncthreads();
    }
}

// The block shape of the tiled backprop kernels (conv_dgrad_tiled, conv_wgrad_tiled): 16 x 16 threads, so a
// BM x BN block tile gives each thread a (BM/16) x (BN/16) register tile; k-tiles of 8; shared rows padded.
// The plans mirror kThreads and kTileK (gpuconv/plans/conv_common.py SIMT16_BLOCK, SIMT16_TILE_K).
namespace simt16x16 {
constexpr int kThreads = 256;   // 16 x 16
constexpr int kTileK = 8;       // BK: gemm_k extent of one shared-memory stage
constexpr int kSmemPad = 4;     // pads a shared row so transposed stores are bank-conflict free

// Resident blocks per SM the tiled kernels ask ptxas for (the min-blocks value of __launch_bounds__; header
// comment). An 8x8 thread tile needs ~150 registers: 1 block (8 warps) per SM; 8x4 fits 128 registers in
// float: 2 blocks, and so does 4x4 (3 blocks = 80 registers spills with 64-bit indexing). Double accumulators: 1.
constexpr int min_blocks(int thread_tile, int acc_bytes) {
    return acc_bytes > 4 || thread_tile >= 64 ? 1 : 2;
}

// The same for the tensor-op kernels built on these tiles (conv_dgrad_tensorop, conv_wgrad_tensorop): those of the
// float SIMT tile (the accumulator fragments hold as many floats per thread), except that 3xTF32's big and small
// fragments need a few registers more: dgrad's 128x64 tile spilled 4 bytes under the 2-block cap (NVRTC 13.5,
// sm_80), so 3xTF32 tiles above 64x64 ask for 1 block.
constexpr int tensorop_min_blocks(int bm, int bn, int passes) {
    return passes == 3 && bm * bn > 64 * 64 ? 1 : min_blocks((bm / 16) * (bn / 16), sizeof(float));
}
}  // namespace simt16x16

// =========================================================================================================
// Non-finite operands: absent taps never multiply
// =========================================================================================================
// DESIGN.md §2: a tap that reads outside x (padding), or a dgrad tap whose dy coordinate is off the stride
// lattice or out of range (an inserted zero), is ABSENT: it takes no part in any multiplication. The
// implicit-GEMM kernels load such taps as zeros and multiply them, which is the same thing while the other
// operand is finite (0 * v = 0 adds nothing) but not when it holds inf or NaN (0 * inf = NaN). The operand
// that meets those zeros is w for fprop and dgrad and dy for wgrad. So a plan that runs a tiled kernel first
// runs conv_nonfinite_flag over that operand (on a zeroed int in device memory; no host synchronisation);
// the tiled kernel reads the flag once, block-uniformly, and when it is set computes its tile's outputs with
// the analytic kernel's per-output function (the same code as the analytic kernel, so the two cannot drift).

// True when v is neither inf nor NaN (exponent field not all ones); bit tests, so no fast-math flag or math
// header can change the answer.
__device__ __forceinline__ bool is_finite_value(float v) {
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ bool is_finite_value(double v) {
    return (static_cast<unsigned long long>(__double_as_longlong(v)) & 0x7ff0000000000000ull) !=
           0x7ff0000000000000ull;
}
__device__ __forceinline__ bool is_finite_value(__half v) { return (__half_as_ushort(v) & 0x7c00u) != 0x7c00u; }

// *flag = 1 when some a[i], i < n, is inf or NaN; *flag is left alone otherwise (the plan zeroes it first).
// Grid-stride (grid_step: i + stride wrapped past INT_MAX for int n within a stride of 2^31); every writer
// stores the same value 1, so concurrent stores need no atomics.
template <typename Element, typename Index>
__global__ void __launch_bounds__(256, 4)
    conv_nonfinite_flag(const Element* __restrict__ a, Index n, int* __restrict__ flag) {
    for (Index i = grid_first<Index>(); i < n; i = grid_step(i, n)) {
        if (!is_finite_value(__ldg(a + i))) {
            *flag = 1;
            return;
        }
    }
}

}  // namespace gpuconv

// =========================================================================================================
// WMMA under the emulator
// =========================================================================================================
// The subset of nvcuda::wmma that conv kernels use (row- and column-major operands, float accumulators; 16x16x16 with half
// inputs, 16x16x8 with precision::tf32 inputs held as float, and __float_to_tf32), for the CPU emulator only:
// every lane holds the whole tile, which is the API's contract seen from outside (the lane distribution of a
// fragment is unspecified, so kernels may only touch fragments through these calls and through uniform
// element-wise operations on fragment.x, which this layout supports too). The documented preconditions are
// checked: 256-bit aligned pointers, ldm a multiple of 16 bytes. The calls are warp-collective, as on the GPU:
// each starts with a __syncwarp (every lane of the warp must reach it), and store_matrix_sync writes only the
// calling lane's share of the tile (lane l: elements [8l, 8l + 8) in row-major order), as a distributed
// fragment does, so a kernel that reads the stored tile without a __syncwarp after the store reads other lanes'
// cells before they are written (poison or stale values under some thread order). Products are exact in float
// and summed in k order, so results can differ from tensor cores in the last bits of the float accumulator
// (tests use tolerances). A tf32 operand is read as the tensor cores read it, through its TF32 bits only (the
// low 13 mantissa bits truncated): a kernel that skipped __float_to_tf32 would be measurably less accurate.
// __float_to_tf32 is cvt.rna.tf32.f32: nearest, ties away from zero, inf and NaN kept. On the GPU, <mma.h> is
// the real thing.
#if defined(GPUCONV_EMULATOR) && !defined(GPUCONV_EMU_HAS_WMMA)
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

// How a fragment of element type T stores its elements and how the tensor cores read one.
template <typename T>
struct operand_of {
    typedef T storage;
    static float read(T v) { return float(v); }
};
template <>
struct operand_of<precision::tf32> {
    typedef float storage;
    static float read(float v) {
        unsigned u;
        memcpy(&u, &v, sizeof u);
        if ((u & 0x7f800000u) != 0x7f800000u) u &= 0xffffe000u;  // finite: the TF32 bits only
        memcpy(&v, &u, sizeof v);
        return v;
    }
};

inline float __float_to_tf32(float v) {
    unsigned u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;  // inf, NaN
    u = (u + 0x1000u) & 0xffffe000u;  // half a TF32 ulp added to the magnitude, then truncated: ties away
    memcpy(&v, &u, sizeof v);
    return v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    typedef typename operand_of<T>::storage storage_element_type;
    static constexpr int kRows = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int kCols = std::is_same<Use, matrix_a>::value ? K : N;
    static constexpr int num_elements = kRows * kCols;
    storage_element_type x[kRows * kCols];
};

inline void check_operand(const void* p, unsigned ldm_bytes, const char* what) {
    if (reinterpret_cast<unsigned long long>(p) % 32 != 0 || ldm_bytes % 16 != 0)
        gpuconv_emu::fail("%s: pointer %p must be 256-bit aligned and ldm (%u bytes) a multiple of 16 bytes", what,
                          p, ldm_bytes);
}

template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const typename operand_of<T>::storage* p,
                             unsigned ldm) {
    typedef fragment<Use, M, N, K, T, L> F;
    check_operand(p, ldm * sizeof(*p), "wmma::load_matrix_sync");
    __syncwarp();
    constexpr bool kColMajor = std::is_same<L, col_major>::value;  // element (r, c) at p[c * ldm + r]
    for (int r = 0; r < F::kRows; ++r)
        for (int c = 0; c < F::kCols; ++c) f.x[r * F::kCols + c] = kColMajor ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K, typename T>
inline void fill_fragment(fragment<accumulator, M, N, K, T>& f, T v) {
    for (int i = 0; i < M * N; ++i) f.x[i] = v;
}

template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
    __syncwarp();
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float acc = c.x[i * N + j];
            for (int k = 0; k < K; ++k)
                acc = fmaf(operand_of<T>::read(a.x[i * K + k]), operand_of<T>::read(b.x[k * N + j]), acc);
            out[i * N + j] = acc;
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
    check_operand(p, ldm * sizeof(float), "wmma::store_matrix_sync");
    __syncwarp();
    constexpr int kShare = M * N / 32;
    const int lane = int((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32);
    for (int e = lane * kShare; e < (lane + 1) * kShare; ++e) {
        const int r = e / N, c = e % N;
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
    }
}
}  // namespace wmma
}  // namespace nvcuda
#endif

// =========================================================================================================
// Tensor-core math (conv_fprop_tensorop, conv_dgrad_tensorop)
// =========================================================================================================
namespace gpuconv {

// TensorOpMath<Element, Passes>: what one warp-level k-step of the tensor-op kernel multiplies -- the WMMA
// shape (16x16x16 for half, 16x16x8 for TF32), the fragment element type, and how a fragment loaded from
// shared memory becomes mma_sync operands:
//   __half, 1   the halves themselves: products exact in the float accumulators.
//   float, 1    TF32 (precision "tf32"): every operand rounded to TF32 (8 exponent bits, 10 explicit mantissa
//               bits; nearest, ties away from zero: cvt.rna.tf32.f32), one mma per product. About three decimal
//               digits per product, float accumulation.
//   float, 3    3xTF32 (precision "3xtf32"; CUTLASS's big + small split): a = big + small with big = tf32(a),
//               small = tf32(a - big), so |a - big - small| <= 2^-22 |a|;
//               a*b ~ a_small*b_big + a_big*b_small + a_big*b_big (small*small, below 2^-22 |a b|, dropped),
//               three mma per product, small terms first: float32-level accuracy on tensor cores.
// A finite operand stays finite: where rounding would overflow (|a| within half a TF32 ulp of FLT_MAX) big is a
// truncated instead, and so is small (rounded, the rest of FLT_MAX, (2^13 - 1) 2^104, becomes 2^117 and
// big + small = 2^128: a product of FLT_MAX and 1 was inf in 3xTF32). Non-finite operands never get here: a
// TF32 plan flags both GEMM operands (plans/conv_fprop.py, conv_dgrad.py), so such a call computes every tile by
// formula (inf * small = inf * 0 would be NaN in 3xTF32).
// TF32 needs sm_80: compiled for an older GPU the float instantiations trap (their plans need sm_80 to be chosen).
#if defined(GPUCONV_EMULATOR) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define GPUCONV_HAS_TF32_MMA 1
#else
#define GPUCONV_HAS_TF32_MMA 0
#endif

template <typename Element, int Passes>
struct TensorOpMath {
    static constexpr bool kAvailable = false;
};

template <>
struct TensorOpMath<__half, 1> {
    static constexpr bool kAvailable = true;
    static constexpr int kK = 16;   // WMMA k of one mma_sync
    static constexpr int kParts = 1;
    typedef __half FragmentElement;
    template <typename Fragment>
    static __device__ __forceinline__ void split(Fragment&, Fragment&) {}
};

#if GPUCONV_HAS_TF32_MMA
// v with its mantissa cut to TF32's 10 bits (rounded toward zero).
__device__ __forceinline__ float tf32_truncated(float v) { return __uint_as_float(__float_as_uint(v) & 0xffffe000u); }

template <int Passes>
struct TensorOpMath<float, Passes> {
    static_assert(Passes == 1 || Passes == 3, "TF32 tensor-op math takes 1 pass (tf32) or 3 (3xtf32)");
    static constexpr bool kAvailable = true;
    static constexpr int kK = 8;
    static constexpr int kParts = Passes == 3 ? 2 : 1;  // big only, or big and small
    typedef nvcuda::wmma::precision::tf32 FragmentElement;
    // big (as loaded: the float operands) -> its TF32 part; small -> the TF32 rest (3xTF32 only). Both nearest
    // (ties away from zero), or both truncated where v's nearest TF32 value would be inf.
    template <typename Fragment>
    static __device__ __forceinline__ void split(Fragment& big, Fragment& small) {
#pragma unroll
        for (int t = 0; t < big.num_elements; ++t) {
            const float v = big.x[t];
            const float nearest = nvcuda::wmma::__float_to_tf32(v);
            const bool cut = !is_finite_value(nearest) && is_finite_value(v);
            const float hi = cut ? tf32_truncated(v) : nearest;
            big.x[t] = hi;
            if (kParts == 2) small.x[t] = cut ? tf32_truncated(v - hi) : nvcuda::wmma::__float_to_tf32(v - hi);
        }
    }
};
#endif

// Where fragment (row, col) of a 16-row / 16-column block starts in shared memory of leading dimension ld.
template <typename Layout>
struct SmemFragmentOffset;
template <>
struct SmemFragmentOffset<nvcuda::wmma::row_major> {
    static __device__ __forceinline__ int at(int row, int col, int ld) { return row * ld + col; }
};
template <>
struct SmemFragmentOffset<nvcuda::wmma::col_major> {
    static __device__ __forceinline__ int at(int row, int col, int ld) { return col * ld + row; }
};

// One BK-wide stage of a warp's tile: acc[i][j] += A[warp rows 16i..][kk..] * B[kk..][warp cols 16j..] for every
// kk step of Math::kK, the operands split as TensorOpMath says (3xTF32: small terms first, then big * big).
// sa: the warp's A block in shared memory, row-major [m][k] or col-major [k][m] (LayoutA), leading dimension
// kStrideA; sb: the warp's B block, row-major [k][n], leading dimension kStrideB.
template <typename Math, typename LayoutA, int BK, int kFragsM, int kFragsN, int kStrideA, int kStrideB,
          typename Smem, typename Acc>
__device__ __forceinline__ void tensorop_stage(Acc (&acc)[kFragsM][kFragsN], const Smem* sa, const Smem* sb) {
    namespace wmma = nvcuda::wmma;
    constexpr int kK = Math::kK, kParts = Math::kParts;
#pragma unroll
    for (int kk = 0; kk < BK; kk += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Math::FragmentElement, LayoutA> a[kParts][kFragsM];
        wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Math::FragmentElement, wmma::row_major> b[kParts][kFragsN];
#pragma unroll
        for (int i = 0; i < kFragsM; ++i) {
            wmma::load_matrix_sync(a[0][i], sa + SmemFragmentOffset<LayoutA>::at(16 * i, kk, kStrideA), kStrideA);
            Math::split(a[0][i], a[kParts - 1][i]);
        }
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) {
            wmma::load_matrix_sync(b[0][j], sb + kk * kStrideB + 16 * j, kStrideB);
            Math::split(b[0][j], b[kParts - 1][j]);
        }
        if constexpr (kParts == 2) {
#pragma unroll
            for (int i = 0; i < kFragsM; ++i)
#pragma unroll
                for (int j = 0; j < kFragsN; ++j) {
                    wmma::mma_sync(acc[i][j], a[1][i], b[0][j], acc[i][j]);
                    wmma::mma_sync(acc[i][j], a[0][i], b[1][j], acc[i][j]);
                }
        }
#pragma unroll
        for (int i = 0; i < kFragsM; ++i)
#pragma unroll
            for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], a[0][i], b[0][j], acc[i][j]);
    }
}

namespace simt16x16 {
// How the backprop kernels (conv_dgrad_tiled, conv_wgrad_tiled and their tensor-op variants) stage a k-tile in
// shared memory, by Passes:
//   0      SIMT: k-tiles of kTileK (8) gemm_k rows held as accumulators (half converted to float once, at the
//          store), rows padded by kSmemPad;
//   1, 3   tensor cores, TensorOpMath<Element, Passes> (Math): k-tiles of one mma k-step (8 for TF32, 16 for
//          half) of the elements themselves, rows padded by 16 bytes (WMMA's ldm must be a multiple of 16 bytes;
//          the padding also spreads the transposed stores over the banks).
template <typename Element, int Passes, bool kTensorOp = (Passes > 0)>
struct BackpropStage {
    typedef typename Accum<Element>::type Smem;
    static constexpr int kBK = kTileK, kPad = kSmemPad;
};
template <typename Element, int Passes>
struct BackpropStage<Element, Passes, true> {
    typedef TensorOpMath<Element, Passes> Math;
    typedef Element Smem;
    static constexpr int kBK = Math::kK, kPad = 16 / int(sizeof(Element));
};

// The tensor-op counterpart of SimtThreadTile for the backprop kernels' stages (conv_dgrad_tensorop,
// conv_wgrad_tensorop): the 8 warps of the block in 2 x 4, each owning a (BM/2) x (BN/4) warp tile of 16 x 16
// float accumulator fragments; one TensorOpMath k-step per k-tile. Both kernels keep A's shared stage k-major,
// [k][m] (a column-major operand), and B's as [k][n] (row-major), rows padded as BackpropStage says.
template <typename Element, int Passes, int BM, int BN>
struct TensorOpWarpTile {
    typedef BackpropStage<Element, Passes> Stage;
    typedef typename Stage::Math Math;
    static constexpr int kWarpsN = 4, kWM = BM / 2, kWN = BN / kWarpsN, kFragsM = kWM / 16, kFragsN = kWN / 16;
    static_assert(kWM % 16 == 0 && kWN % 16 == 0, "warp tiles of whole 16 x 16 fragments");
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, Math::kK, float> acc[kFragsM][kFragsN];
    const int warp, lane, warp_m, warp_n;  // warp_m, warp_n: the warp tile's first row and column

    __device__ __forceinline__ explicit TensorOpWarpTile(int tid)
        : warp(tid / 32), lane(tid % 32), warp_m((warp / kWarpsN) * kWM), warp_n((warp % kWarpsN) * kWN) {
#pragma unroll
        for (int i = 0; i < kFragsM; ++i)
#pragma unroll
            for (int j = 0; j < kFragsN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
    }

    // The main-loop step over one stage: sa = &As[stage][0][0] ([k][BM + pad]), sb = &Bs[stage][0][0].
    __device__ __forceinline__ void stage(const Element* sa, const Element* sb) {
        tensorop_stage<Math, nvcuda::wmma::col_major, Stage::kBK, kFragsM, kFragsN, BM + Stage::kPad,
                       BN + Stage::kPad>(acc, sa + warp_m, sb + warp_n);
    }

    // The epilogue: every accumulator, staged fragment by fragment through the warp's 16 x 16 float tile of
    // shared memory, goes to write(row, col, value) (block-tile coordinates; write checks the bounds). Within a
    // fragment consecutive lanes take consecutive columns, or with kRowsFastest consecutive rows: the direction
    // in which the output is contiguous, so a warp's stores coalesce.
    template <bool kRowsFastest, typename Write>
    __device__ __forceinline__ void epilogue(Write&& write) {
        namespace wmma = nvcuda::wmma;
        __shared__ __align__(32) float Cs[kThreads / 32][16 * 16];
        float* tile = Cs[warp];
#pragma unroll
        for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
            for (int j = 0; j < kFragsN; ++j) {
                wmma::store_matrix_sync(tile, acc[i][j], 16, kRowsFastest ? wmma::mem_col_major : wmma::mem_row_major);
                __syncwarp();
                for (int e = lane; e < 256; e += 32) {
                    const int fast = e % 16, slow = e / 16;
                    const int r = kRowsFastest ? fast : slow, c = kRowsFastest ? slow : fast;
                    write(warp_m + 16 * i + r, warp_n + 16 * j + c, tile[e]);
                }
                __syncwarp();
            }
        }
    }
};
}  // namespace simt16x16

}  // namespace gpuconv

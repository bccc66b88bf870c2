"""CUDA C++ source of the CuPy backend's raw kernels, readable without CuPy or a GPU.

``source()`` is the whole translation unit; ``signatures()`` parses each kernel's parameter
list out of it; ``instantiations()`` names every kernel for every element type, as CuPy's
``RawModule(name_expressions=...)`` wants them (``"cnnc_im2col<float>"``).

Rules the text keeps, so that one text serves NVRTC, ``nvcc`` and a CPU:

- NVRTC has no standard headers: nothing is included, and the only library calls are CUDA's
  built-in math functions, wrapped once per element type (``cnnc_exp`` and friends).
- Every kernel is a template over the element type ``T`` (``float`` or ``double``) and
  walks its work items with a grid-stride loop (``CNNC_LOOP``), so any launch geometry
  covers any size.
- A work item is computed by one thread from its inputs alone: no shared memory, no
  atomics, no synchronisation. Backward passes gather (each input cell sums what reached
  it) instead of scattering. The result is deterministic, and the tests can run the same
  text as plain C++ on a CPU, one thread after another.
- Kernel parameters use only the types in ``PARAM_TYPES``; the host side converts Python
  values to exactly those types before a launch (``cupy_backend.pack_args``).
"""

from __future__ import annotations

import functools
import re

# The activation a kernel applies, passed as an int. "swish" and "silu" are one function.
ACTIVATION_CODES = {
    "identity": 0,
    "relu": 1,
    "leaky_relu": 2,
    "prelu": 3,
    "elu": 4,
    "selu": 5,
    "sigmoid": 6,
    "tanh": 7,
    "softplus": 8,
    "swish": 9,
    "silu": 9,
    "relu6": 10,
    "hardsigmoid": 11,
    "hardswish": 12,
    "gelu": 13,
    "gelu_tanh": 14,
    "mish": 15,
}

# C type of a template instantiation, by NumPy dtype name.
ELEMENT_TYPES = {"float32": "float", "float64": "double"}

# Every parameter type a kernel may take, and what the host passes for it.
PARAM_TYPES = {
    "const T*": "array of the element type (read)",
    "T*": "array of the element type (written)",
    "const int*": "int32 array (read)",
    "int*": "int32 array (written)",
    "T": "scalar of the element type",
    "int": "int32 scalar",
    "long long": "int64 scalar",
}

_BODY = r"""
#define CNNC_LOOP(i, n)                                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;        \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// ---------------------------------------------------------------- math, per element type

__device__ __forceinline__ float cnnc_exp(float v) { return expf(v); }
__device__ __forceinline__ double cnnc_exp(double v) { return exp(v); }
__device__ __forceinline__ float cnnc_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double cnnc_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float cnnc_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double cnnc_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float cnnc_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double cnnc_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float cnnc_erfc(float v) { return erfcf(v); }
__device__ __forceinline__ double cnnc_erfc(double v) { return erfc(v); }
__device__ __forceinline__ float cnnc_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double cnnc_pow(double a, double b) { return pow(a, b); }

// |v|, keeping NaN a NaN
template <typename T>
__device__ __forceinline__ T cnnc_abs(T v) { return v < T(0) ? -v : v; }

// e^min(v, 0) / (1 + e^-|v|): both exponents are <= 0, so nothing overflows
template <typename T>
__device__ __forceinline__ T cnnc_sigmoid(T v) {
    T e = cnnc_exp(-cnnc_abs(v));
    return (v < T(0) ? e : T(1)) / (T(1) + e);
}

// ---------------------------------------------------------------- activations

// The activation `act` at v; `slope` is prelu's slope for v's channel.
template <typename T>
__device__ __forceinline__ T cnnc_act(T v, int act, T alpha, T beta, T slope) {
    switch (act) {
    case CNNC_ACT_RELU:
        return v < T(0) ? T(0) : v;
    case CNNC_ACT_LEAKY_RELU:
        return v < T(0) ? alpha * v : v;
    case CNNC_ACT_PRELU:
        return v < T(0) ? slope * v : v;
    case CNNC_ACT_ELU:
        return v > T(0) ? v : alpha * cnnc_expm1(v);
    case CNNC_ACT_SELU:
        return T(CNNC_SELU_SCALE) * (v > T(0) ? v : T(CNNC_SELU_ALPHA) * cnnc_expm1(v));
    case CNNC_ACT_SIGMOID:
        return cnnc_sigmoid(v);
    case CNNC_ACT_TANH:
        return cnnc_tanh(v);
    case CNNC_ACT_SOFTPLUS:
        // log(1 + e^v) = max(v, 0) + log1p(e^-|v|), finite for every v
        return (v > T(0) ? v : T(0)) + cnnc_log1p(cnnc_exp(-cnnc_abs(v)));
    case CNNC_ACT_SWISH:
        return v * cnnc_sigmoid(beta * v);
    case CNNC_ACT_RELU6:
        return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
    case CNNC_ACT_HARDSIGMOID: {
        T c = v + T(3);
        return (c < T(0) ? T(0) : (c > T(6) ? T(6) : c)) / T(6);
    }
    case CNNC_ACT_HARDSWISH: {
        // v hardsigmoid(v): no overflow of v * 6 near the largest floats
        T c = v + T(3);
        return v * ((c < T(0) ? T(0) : (c > T(6) ? T(6) : c)) / T(6));
    }
    case CNNC_ACT_GELU:
        // v Phi(v), Phi(v) = erfc(-v / sqrt 2) / 2: the left tail keeps its digits
        return v * (T(0.5) * cnnc_erfc(v * T(-0.70710678118654752440)));
    case CNNC_ACT_GELU_TANH: {
        // v sigmoid(2u) = v (1 + tanh u) / 2, u = sqrt(2/pi) (v + 0.044715 v^3); beyond
        // |v| = 64 the gate is 0 or 1 exactly
        T c = v < T(-64) ? T(-64) : (v > T(64) ? T(64) : v);
        return v * cnnc_sigmoid(T(1.5957691216057307118) * c * (T(1) + T(0.044715) * c * c));
    }
    case CNNC_ACT_MISH:
        return v * cnnc_tanh((v > T(0) ? v : T(0)) + cnnc_log1p(cnnc_exp(-cnnc_abs(v))));
    default:
        return v;
    }
}

// dy * act'(v): the gradient at the activation's input v.
template <typename T>
__device__ __forceinline__ T cnnc_act_grad(T dy, T v, int act, T alpha, T beta, T slope) {
    switch (act) {
    case CNNC_ACT_RELU:
        return v > T(0) ? dy : T(0);
    case CNNC_ACT_LEAKY_RELU:
        return v > T(0) ? dy : alpha * dy;
    case CNNC_ACT_PRELU:
        return v > T(0) ? dy : slope * dy;
    case CNNC_ACT_ELU:
        return v > T(0) ? dy : dy * alpha * cnnc_exp(v);
    case CNNC_ACT_SELU:
        return T(CNNC_SELU_SCALE) * (v > T(0) ? dy : dy * T(CNNC_SELU_ALPHA) * cnnc_exp(v));
    case CNNC_ACT_SIGMOID: {
        T s = cnnc_sigmoid(v);
        return dy * s * (T(1) - s);
    }
    case CNNC_ACT_TANH: {
        T t = cnnc_tanh(v);
        return dy * (T(1) - t * t);
    }
    case CNNC_ACT_SOFTPLUS:
        return dy * cnnc_sigmoid(v);
    case CNNC_ACT_SWISH: {
        T s = cnnc_sigmoid(beta * v);
        return dy * (s + beta * v * s * (T(1) - s));
    }
    case CNNC_ACT_RELU6:
        return (v > T(0) && v < T(6)) ? dy : T(0);
    case CNNC_ACT_HARDSIGMOID:
        // PyTorch's choice at the kinks: none at -3 nor at 3
        return (v > T(-3) && v < T(3)) ? dy * T(1.0 / 6.0) : T(0);
    case CNNC_ACT_HARDSWISH:
        // v/3 + 1/2 inside (-3, 3); at the kinks PyTorch's choice, the outer slopes
        return v <= T(-3) ? T(0) : (v < T(3) ? dy * (v / T(3) + T(0.5)) : dy);
    case CNNC_ACT_GELU: {
        // Phi(v) + v phi(v); beyond |v| = 40, v phi(v) is 0 (and v*v stays finite)
        T c = v < T(-40) ? T(-40) : (v > T(40) ? T(40) : v);
        T density = T(0.39894228040143267794) * cnnc_exp(T(-0.5) * c * c);
        return dy * (T(0.5) * cnnc_erfc(v * T(-0.70710678118654752440)) + c * density);
    }
    case CNNC_ACT_GELU_TANH: {
        // s + 2 v s (1 - s) u', s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 0.044715 v^2)
        T c = v < T(-64) ? T(-64) : (v > T(64) ? T(64) : v);
        T s = cnnc_sigmoid(T(1.5957691216057307118) * c * (T(1) + T(0.044715) * c * c));
        T du = T(1.5957691216057307118) * (T(1) + T(0.134145) * c * c);
        return dy * (s + c * s * (T(1) - s) * du);
    }
    case CNNC_ACT_MISH: {
        // t + v sigmoid(v) (1 - t^2), t = tanh(softplus(v)), as PyTorch
        T t = cnnc_tanh((v > T(0) ? v : T(0)) + cnnc_log1p(cnnc_exp(-cnnc_abs(v))));
        return dy * (t + v * cnnc_sigmoid(v) * (T(1) - t * t));
    }
    default:
        return dy;
    }
}

// prelu's slope for `channel`: one shared slope, or one per channel
template <typename T>
__device__ __forceinline__ T cnnc_slope(int act, const T* slopes, int n_slopes, int channel) {
    if (act != CNNC_ACT_PRELU) {
        return T(0);
    }
    return n_slopes == 1 ? slopes[0] : slopes[channel];
}

// y = act(x + bias[c]) over x seen as (outer, channels, inner); y may be x itself.
template <typename T>
__global__ void cnnc_bias_act(const T* x, T* y, const T* bias, int has_bias, long long n,
                              int channels, long long inner, int act, T alpha, T beta,
                              const T* slopes, int n_slopes) {
    CNNC_LOOP(i, n) {
        int c = (int)((i / inner) % channels);
        T v = x[i];
        if (has_bias) {
            v += bias[c];
        }
        y[i] = cnnc_act(v, act, alpha, beta, cnnc_slope(act, slopes, n_slopes, c));
    }
}

// dx = dy * act'(x) over x seen as (outer, channels, inner).
template <typename T>
__global__ void cnnc_act_backward(const T* dy, const T* x, T* dx, long long n, int channels,
                                  long long inner, int act, T alpha, T beta,
                                  const T* slopes, int n_slopes) {
    CNNC_LOOP(i, n) {
        int c = (int)((i / inner) % channels);
        T slope = cnnc_slope(act, slopes, n_slopes, c);
        dx[i] = cnnc_act_grad(dy[i], x[i], act, alpha, beta, slope);
    }
}

// y = x * scale[c] + shift[c] over x seen as (outer, channels, inner): inference batchnorm.
template <typename T>
__global__ void cnnc_scale_shift(const T* x, T* y, const T* scale, const T* shift,
                                 long long n, int channels, long long inner) {
    CNNC_LOOP(i, n) {
        int c = (int)((i / inner) % channels);
        y[i] = x[i] * scale[c] + shift[c];
    }
}

// ---------------------------------------------------------------- convolution

// Column matrix of a chunk of nb images: col[r][q], r = (c*kh + ki)*kw + kj over
// (C, kh, kw) and q = (b*Ho + oh)*Wo + ow over (nb, Ho, Wo); cells in the padding are 0.
template <typename T>
__global__ void cnnc_im2col(const T* x, T* col, long long n, int nb, int C, int H, int W,
                            int kh, int kw, int sh, int sw, int pad_top, int pad_left,
                            int dh, int dw, int Ho, int Wo) {
    long long cols = (long long)nb * Ho * Wo;
    CNNC_LOOP(i, n) {
        long long q = i % cols;
        long long r = i / cols;
        int ow = (int)(q % Wo);
        long long t = q / Wo;
        int oh = (int)(t % Ho);
        long long b = t / Ho;
        int kj = (int)(r % kw);
        long long u = r / kw;
        int ki = (int)(u % kh);
        long long c = u / kh;
        int h = oh * sh - pad_top + ki * dh;
        int w = ow * sw - pad_left + kj * dw;
        T v = T(0);
        if (h >= 0 && h < H && w >= 0 && w < W) {
            v = x[((b * C + c) * H + h) * W + w];
        }
        col[i] = v;
    }
}

// The adjoint of cnnc_im2col: dx[b, c, h, w] sums every column cell that read x[b, c, h, w].
template <typename T>
__global__ void cnnc_col2im(const T* col, T* dx, long long n, int nb, int C, int H, int W,
                            int kh, int kw, int sh, int sw, int pad_top, int pad_left,
                            int dh, int dw, int Ho, int Wo) {
    long long cols = (long long)nb * Ho * Wo;
    CNNC_LOOP(i, n) {
        int w = (int)(i % W);
        long long t = i / W;
        int h = (int)(t % H);
        t /= H;
        long long c = t % C;
        long long b = t / C;
        T acc = T(0);
        for (int ki = 0; ki < kh; ++ki) {
            int th = h + pad_top - ki * dh;  // oh * sh when row ki of window oh reads h
            if (th < 0) {
                break;
            }
            if (th % sh != 0 || th / sh >= Ho) {
                continue;
            }
            int oh = th / sh;
            for (int kj = 0; kj < kw; ++kj) {
                int tw = w + pad_left - kj * dw;
                if (tw < 0) {
                    break;
                }
                if (tw % sw != 0 || tw / sw >= Wo) {
                    continue;
                }
                int ow = tw / sw;
                long long r = (c * kh + ki) * kw + kj;
                acc += col[r * cols + (b * Ho + oh) * Wo + ow];
            }
        }
        dx[i] = acc;
    }
}

// out (nb, O, S) from the GEMM result tmp (O, nb, S), with bias and activation.
template <typename T>
__global__ void cnnc_conv_epilogue(const T* tmp, T* out, const T* bias, int has_bias,
                                   long long n, int nb, int channels, long long spatial,
                                   int act, T alpha, T beta, const T* slopes, int n_slopes) {
    CNNC_LOOP(i, n) {
        long long s = i % spatial;
        long long r = i / spatial;
        int c = (int)(r % channels);
        long long b = r / channels;
        T v = tmp[((long long)c * nb + b) * spatial + s];
        if (has_bias) {
            v += bias[c];
        }
        out[i] = cnnc_act(v, act, alpha, beta, cnnc_slope(act, slopes, n_slopes, c));
    }
}

// Direct convolution for one input channel per group (depthwise, any multiplier):
// y[b, o, oh, ow] = act(bias[o] + sum over taps of x[b, o / mult, h, w] * wt[o, ki, kj]).
template <typename T>
__global__ void cnnc_depthwise_conv(const T* x, const T* wt, const T* bias, int has_bias,
                                    T* y, long long n, int C, int H, int W, int O,
                                    int kh, int kw, int sh, int sw, int pad_top,
                                    int pad_left, int dh, int dw, int Ho, int Wo,
                                    int act, T alpha, T beta, const T* slopes,
                                    int n_slopes) {
    int mult = O / C;
    CNNC_LOOP(i, n) {
        int ow = (int)(i % Wo);
        long long t = i / Wo;
        int oh = (int)(t % Ho);
        t /= Ho;
        int o = (int)(t % O);
        long long b = t / O;
        const T* plane = x + (b * C + o / mult) * H * W;
        const T* taps = wt + (long long)o * kh * kw;
        T acc = T(0);
        for (int ki = 0; ki < kh; ++ki) {
            int h = oh * sh - pad_top + ki * dh;
            if (h < 0 || h >= H) {
                continue;
            }
            for (int kj = 0; kj < kw; ++kj) {
                int w = ow * sw - pad_left + kj * dw;
                if (w >= 0 && w < W) {
                    acc += plane[(long long)h * W + w] * taps[ki * kw + kj];
                }
            }
        }
        if (has_bias) {
            acc += bias[o];
        }
        y[i] = cnnc_act(acc, act, alpha, beta, cnnc_slope(act, slopes, n_slopes, o));
    }
}

// ---------------------------------------------------------------- pooling

// Max over each window of every (H, W) plane. Taps in the padding never win; ties go to
// the first tap in window order (row by row); a NaN wins and stays. With save_argmax,
// argmax holds the winner's flat index h*W + w in its plane (-1: the window saw no input,
// and y is `lowest`).
template <typename T>
__global__ void cnnc_maxpool_forward(const T* x, T* y, int* argmax, int save_argmax,
                                     long long n, int H, int W, int Ho, int Wo, int kh,
                                     int kw, int sh, int sw, int pad_top, int pad_left,
                                     int dh, int dw, T lowest) {
    CNNC_LOOP(i, n) {
        int ow = (int)(i % Wo);
        long long t = i / Wo;
        int oh = (int)(t % Ho);
        long long p = t / Ho;
        const T* plane = x + p * H * W;
        T best = lowest;
        int best_at = -1;
        for (int ki = 0; ki < kh; ++ki) {
            int h = oh * sh - pad_top + ki * dh;
            if (h < 0 || h >= H) {
                continue;
            }
            for (int kj = 0; kj < kw; ++kj) {
                int w = ow * sw - pad_left + kj * dw;
                if (w < 0 || w >= W) {
                    continue;
                }
                T v = plane[h * W + w];
                bool nan_now = v != v && best == best;
                if (best_at < 0 || v > best || nan_now) {
                    best = v;
                    best_at = h * W + w;
                }
            }
        }
        y[i] = best;
        if (save_argmax) {
            argmax[i] = best_at;
        }
    }
}

// dx[p, h, w] sums dy over the windows whose argmax is (h, w).
template <typename T>
__global__ void cnnc_maxpool_backward(const T* dy, const int* argmax, T* dx, long long n,
                                      int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                      int sw, int pad_top, int pad_left, int dh, int dw) {
    CNNC_LOOP(i, n) {
        int at = (int)(i % ((long long)H * W));
        long long p = i / ((long long)H * W);
        int h = at / W;
        int w = at % W;
        long long base = p * Ho * Wo;
        T acc = T(0);
        for (int ki = 0; ki < kh; ++ki) {
            int th = h + pad_top - ki * dh;
            if (th < 0) {
                break;
            }
            if (th % sh != 0 || th / sh >= Ho) {
                continue;
            }
            int oh = th / sh;
            for (int kj = 0; kj < kw; ++kj) {
                int tw = w + pad_left - kj * dw;
                if (tw < 0) {
                    break;
                }
                if (tw % sw != 0 || tw / sw >= Wo) {
                    continue;
                }
                long long o = base + (long long)oh * Wo + tw / sw;
                if (argmax[o] == at) {
                    acc += dy[o];
                }
            }
        }
        dx[i] = acc;
    }
}

// Cells that a window starting at `start` (k long) averages over, along one axis of
// length `size` padded by `pad_end` after it: with count_pad, the window clipped to the
// padded input; without, only the real cells [0, size).
__device__ __forceinline__ int cnnc_pool_count(int start, int k, int size, int pad_end,
                                               int count_pad) {
    int end = start + k;
    if (count_pad) {
        return (end < size + pad_end ? end : size + pad_end) - start;
    }
    return (end < size ? end : size) - (start > 0 ? start : 0);
}

__device__ __forceinline__ int cnnc_pool_divisor(int hs, int ws, int kh, int kw, int H,
                                                 int W, int pad_bottom, int pad_right,
                                                 int count_pad) {
    int d = cnnc_pool_count(hs, kh, H, pad_bottom, count_pad) *
            cnnc_pool_count(ws, kw, W, pad_right, count_pad);
    return d > 1 ? d : 1;  // a window of padding only sums to 0; keep it 0
}

// Mean over each window of every (H, W) plane; padding adds zeros.
template <typename T>
__global__ void cnnc_avgpool_forward(const T* x, T* y, long long n, int H, int W, int Ho,
                                     int Wo, int kh, int kw, int sh, int sw, int pad_top,
                                     int pad_bottom, int pad_left, int pad_right,
                                     int count_pad) {
    CNNC_LOOP(i, n) {
        int ow = (int)(i % Wo);
        long long t = i / Wo;
        int oh = (int)(t % Ho);
        long long p = t / Ho;
        const T* plane = x + p * H * W;
        int hs = oh * sh - pad_top;
        int ws = ow * sw - pad_left;
        int h0 = hs > 0 ? hs : 0;
        int h1 = hs + kh < H ? hs + kh : H;
        int w0 = ws > 0 ? ws : 0;
        int w1 = ws + kw < W ? ws + kw : W;
        T acc = T(0);
        for (int h = h0; h < h1; ++h) {
            for (int w = w0; w < w1; ++w) {
                acc += plane[(long long)h * W + w];
            }
        }
        int d = cnnc_pool_divisor(hs, ws, kh, kw, H, W, pad_bottom, pad_right, count_pad);
        y[i] = acc / T(d);
    }
}

// First window index o (stride s, start o*s - pad) whose k cells reach position v: the
// windows that contain v are first..last, clipped to [0, n_out).
__device__ __forceinline__ int cnnc_first_window(int v, int pad, int k, int s) {
    int t = v + pad - k + 1;  // o*s >= t
    return t <= 0 ? 0 : (t + s - 1) / s;
}

// dx[p, h, w] sums dy / divisor over the windows that contain (h, w).
template <typename T>
__global__ void cnnc_avgpool_backward(const T* dy, T* dx, long long n, int H, int W, int Ho,
                                      int Wo, int kh, int kw, int sh, int sw, int pad_top,
                                      int pad_bottom, int pad_left, int pad_right,
                                      int count_pad) {
    CNNC_LOOP(i, n) {
        int w = (int)(i % W);
        long long t = i / W;
        int h = (int)(t % H);
        long long p = t / H;
        int oh0 = cnnc_first_window(h, pad_top, kh, sh);
        int oh1 = (h + pad_top) / sh;
        if (oh1 > Ho - 1) {
            oh1 = Ho - 1;
        }
        int ow0 = cnnc_first_window(w, pad_left, kw, sw);
        int ow1 = (w + pad_left) / sw;
        if (ow1 > Wo - 1) {
            ow1 = Wo - 1;
        }
        const T* grad = dy + p * Ho * Wo;
        T acc = T(0);
        for (int oh = oh0; oh <= oh1; ++oh) {
            for (int ow = ow0; ow <= ow1; ++ow) {
                int d = cnnc_pool_divisor(oh * sh - pad_top, ow * sw - pad_left, kh, kw, H, W,
                                          pad_bottom, pad_right, count_pad);
                acc += grad[oh * Wo + ow] / T(d);
            }
        }
        dx[i] = acc;
    }
}

// ---------------------------------------------------------------- normalisation

// Local response normalisation across channels, x seen as (outer, C, inner):
// y_c = x_c / (k + alpha/size * sum of x_j^2, j from c - size/2 to c + (size-1)/2)^beta.
template <typename T>
__global__ void cnnc_lrn_forward(const T* x, T* y, long long n, int C, long long inner,
                                 int size, T alpha_over_size, T beta, T k) {
    CNNC_LOOP(i, n) {
        int c = (int)((i / inner) % C);
        long long base = i - (long long)c * inner;  // channel 0 of the same position
        int lo = c - size / 2;
        int hi = c + (size - 1) / 2;
        if (lo < 0) {
            lo = 0;
        }
        if (hi > C - 1) {
            hi = C - 1;
        }
        T acc = T(0);
        for (int j = lo; j <= hi; ++j) {
            T v = x[base + (long long)j * inner];
            acc += v * v;
        }
        y[i] = x[i] / cnnc_pow(k + alpha_over_size * acc, beta);
    }
}
"""


# SELU's constants, Klambauer et al. 2017, eq. 14, as in PyTorch: the digits of
# ops/activation.py's SELU_ALPHA and SELU_SCALE (a test holds the two equal; this module
# imports no family, since the families import it).
SELU_DEFINES = {
    "CNNC_SELU_ALPHA": "1.6732632423543772848170429916717",
    "CNNC_SELU_SCALE": "1.0507009873554804934193349852946",
}


def _header() -> str:
    lines = ["// cnnc CUDA kernels: generated header (ops/cuda_kernels.py)"]
    seen = set()
    for name, code in ACTIVATION_CODES.items():
        if code in seen:
            continue
        seen.add(code)
        lines.append(f"#define CNNC_ACT_{name.upper()} {code}")
    for name, digits in SELU_DEFINES.items():
        lines.append(f"#define {name} {digits}")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def source() -> str:
    """The whole CUDA translation unit, as NVRTC and ``nvcc`` compile it."""
    return _header() + _BODY


_KERNEL_RE = re.compile(
    r"template <typename T>\s*__global__\s+void\s+(\w+)\s*\(([^)]*)\)", re.MULTILINE
)
_PARAM_RE = re.compile(r"^(const T\*|T\*|const int\*|int\*|T|int|long long)\s+(\w+)$")


@functools.lru_cache(maxsize=None)
def signatures() -> dict[str, tuple[tuple[str, str], ...]]:
    """Kernel name -> its parameters as ``(type, name)`` pairs, in order."""
    out = {}
    for match in _KERNEL_RE.finditer(_BODY):
        name, params = match.group(1), match.group(2)
        parsed = []
        for param in params.split(","):
            text = " ".join(param.split())
            found = _PARAM_RE.match(text)
            if found is None:
                raise AssertionError(f"kernel {name}: parameter {text!r} has a type outside "
                                     f"{sorted(PARAM_TYPES)}")
            parsed.append((found.group(1), found.group(2)))
        out[name] = tuple(parsed)
    return out


def instantiation(kernel: str, dtype) -> str:
    """The name expression of ``kernel`` for a NumPy dtype: ``"cnnc_im2col<float>"``."""
    return f"{kernel}<{ELEMENT_TYPES[str(dtype)]}>"


def instantiations() -> list[str]:
    """Every kernel for every element type, as ``RawModule(name_expressions=...)`` takes."""
    return [instantiation(name, dtype) for name in signatures() for dtype in ELEMENT_TYPES]


def explicit_instantiations() -> str:
    """C++ explicit instantiations of every kernel template, for compilers that get no
    name expressions (``nvcc`` in the tests, the CPU harness)."""
    lines = []
    for name, params in signatures().items():
        for ctype in ELEMENT_TYPES.values():
            types = ", ".join(t.replace("T", ctype) if "T" in t else t for t, _ in params)
            lines.append(f"template __global__ void {name}<{ctype}>({types});")
    return "\n".join(lines) + "\n"

/* The decoding forward of GPT-2 and of the rotary families (Llama, GPT-NeoX, GPT-J), fused in C: the
 * CPU fast path of the engine.
 *
 * Why: a decoding step of a small model feeds one token per row through the network, so each of
 * its ~100 tensor operations works on a few hundred floats, and in PyTorch each costs a dispatch
 * (5-15 us on a small VM) that dwarfs the arithmetic. Here a whole step (or a short prompt) runs
 * in one OpenMP parallel region (the same runtime torch uses, so torch.set_num_threads applies):
 * each thread streams its own band of every weight matrix (a step reads all the weights once, so
 * memory bandwidth sets its speed), the attention is split by (query, head), and the threads meet
 * at a barrier only where one needs another's results. The math is exactly hangpt/models' (GPT-2:
 * pre-LayerNorm blocks, GELU-tanh MLP, learned positions; Llama: RMSNorm, rotary positions,
 * grouped-query attention, SwiGLU MLP, optional q/k/v biases and per-head q/k norms; GPT-NeoX and
 * GPT-J: LayerNorms, partial rotary, GELU MLP, parallel residuals);
 * hangpt/engine/fast.py compiles this file, and tests check it against the PyTorch forward.
 *
 * Layouts: GPT-2's weights as in its checkpoints, Conv1D (in, out) row-major, its LM head as a
 * transposed copy (hidden, vocab) in float32 and as is (vocab, hidden) in bf16; the rotary families' as
 * nn.Linear, (out, in), the LM head as is (vocab, hidden). The KV cache is (layers, batch, kv_heads,
 * max_len, head_dim).
 *
 * bfloat16 models: the weight matrices, embeddings and KV cache are read as they are, bf16 (half the
 * bytes a step streams, and no float32 copy in memory); the products are summed in float32, and the
 * activations, kept in float32, are rounded to bf16 wherever torch's bf16 forward rounds its results
 * (each linear layer, norm, residual sum, rotation, attention score and weight, activation function),
 * so both compute with the same numbers. Caching k and v in float32 would gain nothing: they are
 * bf16 values. Where the compiler targets AVX512-BF16 (-march=native on such a CPU) the nn.Linear-layout
 * matrices are multiplied with its bf16 dot product (32 products per instruction; exact, as the
 * activations are bf16 values); elsewhere, and for GPT-2's Conv1D layout (whose pairs of input rows
 * would need shuffling first), each weight is widened to float32 by a shift (auto-vectorised).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

/* The shapes of one call, mirrored by fast.Shape (same fields, same order). */
typedef struct {
    int layers, heads, kv_heads, head_dim, hidden, mlp, vocab;
    int queries;  /* N: tokens fed in this call */
    int outputs;  /* M: how many of them want next-token logits */
    int batch;    /* B: rows of the KV cache */
    int max_len;  /* T: positions of the KV cache */
    int past;     /* filled positions before this call (a decoding query's slot) */
    int threads;
    float eps;    /* of the LayerNorms / RMSNorms */
    int bf16;     /* 0: float32 model; 1: bf16 weight matrices and cache (see above); 2: the same with
                     AVX512-BF16 dot products (only if hangpt_native_bf16()) */
    /* the rotary families' variations (hangpt_rotary_forward; 0 for GPT-2) */
    int layer_norm;   /* 1: LayerNorms with biases (GPT-NeoX, GPT-J); 0: RMSNorms (Llama) */
    int parallel;     /* 1: x + attn(norm1(x)) + mlp(norm2(x)), norm2 = norm1 without a second norm (GPT-J);
                         0: the MLP reads x + attn(norm1(x)) */
    int rotary_dims;  /* the first rotary_dims dimensions of each head turn (GPT-NeoX's rotary_pct, GPT-J's
                         rotary_dim; head_dim for Llama) */
    int interleaved;  /* 1: GPT-J's pairs (2i, 2i+1); 0: "rotate half", pairs (i, i + rotary_dims / 2) */
    int activation;   /* of the MLP (gated by the up projection when there is a gate): ACT_* */
} Shape;

enum { ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_RELU };

/* The queries of one call and where results go, mirrored by fast.Queries. tokens, positions, rows,
 * slots: N each; NULL rows means query n is cache row n, NULL slots means every slot is `past`,
 * NULL positions means each position is the slot. keep: B rows of keep_stride bytes (1 = a real
 * token) or NULL. out_rows: the M queries whose logits are wanted (NULL: all, M = N); logits
 * (M, vocab) and argmax (M: the greedy tokens, the first index of the maximum as torch.argmax). */
typedef struct {
    const long long *tokens, *positions, *rows, *slots;
    const unsigned char *keep;
    long long keep_stride;
    const long long *out_rows;
    void *kcache, *vcache;  /* float32, or bf16 in a bf16 model */
    float *logits;
    long long *argmax;
    float *scratch;  /* hangpt_*_scratch(shape) floats */
} Queries;

#define ROW(io, n) ((io)->rows ? (io)->rows[n] : (long long)(n))
#define SLOT(s, io, n) ((io)->slots ? (io)->slots[n] : (long long)(s)->past)
#define POSITION(s, io, n) ((io)->positions ? (io)->positions[n] : SLOT(s, io, n))

/* ---- bfloat16: the top half of a float32 ---- */
typedef uint16_t bf16;

#pragma omp declare simd
static inline float widen(bf16 b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* x to the nearest bf16, ties to even, NaN kept a NaN: torch's float -> bfloat16 conversion. */
#pragma omp declare simd
static inline bf16 bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return x != x ? (bf16)0x7fc0 : (bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#pragma omp declare simd
static inline float round_bf16(float x) {
    return widen(bf16_bits(x));
}

/* An activation as the forward keeps it (wide: a bf16 model's, rounded to bf16), and element i of
 * a weight matrix or cache, float32 or bf16. `wide` is a constant where it matters: the kernels
 * below are inlined into one copy per type. */
#define ROUND(wide, x) ((wide) ? round_bf16(x) : (x))
#define AT(wide, p, i) ((wide) ? widen(((const bf16 *)(p))[i]) : ((const float *)(p))[i])
#define INLINE static inline __attribute__((always_inline))

/* This thread's share [*lo, *hi) of n items, in multiples of `grain`. */
static void share(int n, int grain, int *lo, int *hi) {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int per = ((n + nt - 1) / nt + grain - 1) / grain * grain;
    *lo = t * per < n ? t * per : n;
    *hi = *lo + per < n ? *lo + per : n;
}

/* ---- matrix products and norms ---- */
/* p[b, o] += sum over rows i in [i0, i1) of x[b, i] W[i, o], for one row of x: eight rows of W
 * at a time, so p is read and written once per eight rows of W. */
INLINE void rows_one(const float *restrict x, const void *restrict W, int wide, float *restrict p, int out, int i0,
                     int i1, int ob, int oe) {
    int i = i0;
    for (; i + 8 <= i1; i += 8) {
        const size_t w = (size_t)i * out;
        float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3], x4 = x[i + 4], x5 = x[i + 5], x6 = x[i + 6],
              x7 = x[i + 7];
#pragma omp simd
        for (int o = ob; o < oe; o++)
            p[o] += x0 * AT(wide, W, w + o) + x1 * AT(wide, W, w + out + o) + x2 * AT(wide, W, w + 2 * out + o)
                  + x3 * AT(wide, W, w + 3 * out + o) + x4 * AT(wide, W, w + 4 * out + o)
                  + x5 * AT(wide, W, w + 5 * out + o) + x6 * AT(wide, W, w + 6 * out + o)
                  + x7 * AT(wide, W, w + 7 * out + o);
    }
    for (; i < i1; i++) {
        const size_t w = (size_t)i * out;
        float xi = x[i];
#pragma omp simd
        for (int o = ob; o < oe; o++) p[o] += xi * AT(wide, W, w + o);
    }
}

/* The same for four rows of x at once: each vector of W loaded feeds all four (beams, batches). */
INLINE void rows_four(const float *restrict x, int in, const void *restrict W, int wide, float *restrict p, int out,
                      int i0, int i1, int ob, int oe) {
    float *restrict p0 = p, *restrict p1 = p + out, *restrict p2 = p + 2 * (size_t)out, *restrict p3 = p + 3 * (size_t)out;
    int i = i0;
    for (; i + 4 <= i1; i += 4) {
        const size_t w = (size_t)i * out;
        const float *a = x + i, *b = x + in + i, *c = x + 2 * (size_t)in + i, *d = x + 3 * (size_t)in + i;
#pragma omp simd
        for (int o = ob; o < oe; o++) {
            float s0 = p0[o], s1 = p1[o], s2 = p2[o], s3 = p3[o];
            for (int j = 0; j < 4; j++) {
                float wj = AT(wide, W, w + (size_t)j * out + o);
                s0 += a[j] * wj;
                s1 += b[j] * wj;
                s2 += c[j] * wj;
                s3 += d[j] * wj;
            }
            p0[o] = s0, p1[o] = s1, p2[o] = s2, p3[o] = s3;
        }
    }
    for (int r = 0; r < 4; r++) rows_one(x + (size_t)r * in, W, wide, p + (size_t)r * out, out, i, i1, ob, oe);
}

/* y (B, out) = [y +] x (B, in) @ W (in, out) [+ bias], called by every thread of the team (in a bf16
 * model the product plus bias is rounded, then the sum with y, as torch's addmm and add round).
 * Each thread streams its own contiguous band of W's rows (one sequential read per thread is
 * what memory bandwidth rewards) into its partial sums, in blocks of columns that stay in L1;
 * after a barrier the threads add the partials up, each for its share of the columns. The order
 * of the additions depends only on the thread count, so results are repeatable. */
INLINE void matmul_of(const float *restrict x, const void *restrict W, int wide, const float *restrict bias,
                      float *restrict y, int B, int in, int out, int accumulate, float *restrict partial) {
    int i0, i1, o0, o1, nt = omp_get_num_threads();
    share(in, 16, &i0, &i1);
    float *mine = partial + (size_t)omp_get_thread_num() * B * out;
    memset(mine, 0, (size_t)B * out * sizeof(float));
    const int block = 1024;
    for (int ob = 0; ob < out; ob += block) {
        int oe = ob + block < out ? ob + block : out, b = 0;
        for (; b + 4 <= B; b += 4)
            rows_four(x + (size_t)b * in, in, W, wide, mine + (size_t)b * out, out, i0, i1, ob, oe);
        for (; b < B; b++) rows_one(x + (size_t)b * in, W, wide, mine + (size_t)b * out, out, i0, i1, ob, oe);
    }
#pragma omp barrier
    share(out, 16, &o0, &o1);
    for (int b = 0; b < B; b++) {
        float *yb = y + (size_t)b * out;
        for (int o = o0; o < o1; o++) {
            float sum = bias ? bias[o] : 0.0f;
            for (int k = 0; k < nt; k++) sum += partial[((size_t)k * B + b) * out + o];
            yb[o] = accumulate ? ROUND(wide, yb[o] + ROUND(wide, sum)) : ROUND(wide, sum);
        }
    }
}

static void matmul(const Shape *s, const float *x, const void *W, const float *bias, float *y, int B, int in, int out,
                   int accumulate, float *partial) {
    if (s->bf16)
        matmul_of(x, W, 1, bias, y, B, in, out, accumulate, partial);
    else
        matmul_of(x, W, 0, bias, y, B, in, out, accumulate, partial);
}

#define LANES 16
#define AHEAD 4 /* rows: prefetch the next block of four (measured: further ahead is slower) */

/* y[b, o..o+rows) from the four row sums of W . x[b]: plus bias, rounded (bf16), added to y. */
INLINE void store_sums(float *yb, const float *sums, int rows, const float *bias, int accumulate, int wide) {
    for (int r = 0; r < rows; r++) {
        float value = ROUND(wide, sums[r] + (bias ? bias[r] : 0.0f));
        yb[r] = accumulate ? ROUND(wide, yb[r] + value) : value;
    }
}

INLINE void linear_band_of(const float *restrict x, const void *restrict W, int wide, const float *restrict bias,
                           float *restrict y, int B, int in, int out, int accumulate) {
    int o0, o1;
    share(out, 4, &o0, &o1);
    const int body = in / LANES * LANES;
    const size_t size = wide ? sizeof(bf16) : sizeof(float);
    for (int o = o0; o < o1; o += 4) {
        const int rows = o1 - o < 4 ? o1 - o : 4;
        size_t w[4];  /* where each row starts in W */
        for (int r = 0; r < 4; r++) w[r] = (size_t)(o + (r < rows ? r : 0)) * in;
        /* rows further on: W is read in order */
        const char *next = (const char *)W + (w[0] + AHEAD * (size_t)in) * size;
        for (int b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * in;
            float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
            for (int i = 0; i < body; i += LANES) {
                if (b == 0 && o + AHEAD + 4 <= o1)  /* fetched while these are summed */
                    for (int r = 0; r < 4; r++) __builtin_prefetch(next + (4 * i + r * LANES) * size);
#pragma omp simd
                for (int j = 0; j < LANES; j++) {
                    float xv = xb[i + j];
                    a0[j] += xv * AT(wide, W, w[0] + i + j);
                    a1[j] += xv * AT(wide, W, w[1] + i + j);
                    a2[j] += xv * AT(wide, W, w[2] + i + j);
                    a3[j] += xv * AT(wide, W, w[3] + i + j);
                }
            }
            float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int j = 0; j < LANES; j++) sums[0] += a0[j], sums[1] += a1[j], sums[2] += a2[j], sums[3] += a3[j];
            for (int i = body; i < in; i++)
                for (int r = 0; r < 4; r++) sums[r] += xb[i] * AT(wide, W, w[r] + i);
            store_sums(y + (size_t)b * out + o, sums, rows, bias ? bias + o : 0, accumulate, wide);
        }
    }
}

#ifdef __AVX512BF16__
/* linear_band_of for bf16 weights with AVX512-BF16: each instruction multiplies 16 pairs of bf16
 * and adds them to 16 float32 sums, so the arithmetic of a block of four rows costs a third of
 * widening; x is converted to bf16 as it is read (exactly: a bf16 model's activations are bf16
 * values). The tail of a row shorter than 32 is read through a mask. */
static void linear_band_dpbf16(const float *restrict x, const bf16 *restrict W, const float *restrict bias,
                               float *restrict y, int B, int in, int out, int accumulate) {
    int o0, o1;
    share(out, 4, &o0, &o1);
    for (int o = o0; o < o1; o += 4) {
        const int rows = o1 - o < 4 ? o1 - o : 4;
        const bf16 *w[4];
        for (int r = 0; r < 4; r++) w[r] = W + (size_t)(o + (r < rows ? r : 0)) * in;
        const char *next = (const char *)(w[0] + AHEAD * (size_t)in);
        for (int b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * in;
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int i = 0; i < in; i += 32) {
                const int left = in - i;
                const __mmask32 m = left >= 32 ? 0xffffffffu : (1u << left) - 1;
                const __m512bh xv = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps((__mmask16)(m >> 16), xb + i + 16),
                                                        _mm512_maskz_loadu_ps((__mmask16)m, xb + i));
                if (b == 0 && o + AHEAD + 4 <= o1)
                    for (int r = 0; r < 4; r++) __builtin_prefetch(next + 4 * i * sizeof(bf16) + r * 64);
                for (int r = 0; r < 4; r++)
                    a[r] = _mm512_dpbf16_ps(a[r], xv, (__m512bh)_mm512_maskz_loadu_epi16(m, w[r] + i));
            }
            float sums[4];
            for (int r = 0; r < 4; r++) sums[r] = _mm512_reduce_add_ps(a[r]);
            store_sums(y + (size_t)b * out + o, sums, rows, bias ? bias + o : 0, accumulate, 1);
        }
    }
}
#endif

/* Whether this build multiplies bf16 with AVX512-BF16 (Shape.bf16 = 2 may be asked for). */
int hangpt_native_bf16(void) {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}

/* y (B, out) = [y +] x (B, in) W^T [+ bias] for W in nn.Linear's layout (out, in), this thread
 * computing its band of the outputs: it streams its contiguous band of W's rows once, four rows at
 * a time against each row of x, with a vector of LANES partial sums per row, prefetching the
 * rows that come next (short rows, as Llama's 256-1024 floats, give the hardware prefetcher too
 * little to detect). No partial results to add up across threads: a barrier is needed only
 * before y is read. */
static void linear(const Shape *s, const float *x, const void *W, const float *bias, float *y, int B, int in, int out,
                   int accumulate) {
#ifdef __AVX512BF16__
    if (s->bf16 == 2) {
        linear_band_dpbf16(x, W, bias, y, B, in, out, accumulate);
        return;
    }
#endif
    if (s->bf16)
        linear_band_of(x, W, 1, bias, y, B, in, out, accumulate);
    else
        linear_band_of(x, W, 0, bias, y, B, in, out, accumulate);
}

/* LayerNorm of one row of C floats into the columns [c0, c1) of y (the statistics of the whole row). */
static void layer_norm_row(const float *xr, const float *w, const float *bias, float *y, int C, int c0, int c1,
                           float eps, int wide) {
    float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+ : mean)
    for (int c = 0; c < C; c++) mean += xr[c];
    mean /= C;
#pragma omp simd reduction(+ : var)
    for (int c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
    float inv = 1.0f / sqrtf(var / C + eps);
#pragma omp simd
    for (int c = c0; c < c1; c++) y[c] = ROUND(wide, (xr[c] - mean) * inv * w[c] + bias[c]);
}

/* LayerNorm of rows of x into the rows of y (y row r from x row `pick[r]`, or row r when pick is
 * NULL), this thread writing only its band of the columns: the band of rows of W that its next
 * matmul reads, so no barrier is needed in between (the statistics of the whole row are cheap
 * to compute in every thread). */
static void layer_norm_band(const float *x, const long long *pick, const float *w, const float *bias, float *y,
                            int count, int C, float eps, int wide) {
    int c0, c1;
    share(C, 16, &c0, &c1);
    for (int r = 0; r < count; r++)
        layer_norm_row(x + (size_t)(pick ? pick[r] : r) * C, w, bias, y + (size_t)r * C, C, c0, c1, eps, wide);
}

/* RMSNorm of one vector of C floats, y = w * x / rms(x) (y may be x): the Llama family's block
 * norms, and Qwen3's per-head q/k norms. In bf16, x / rms(x) is rounded before the product, as
 * models.layers.RMSNorm does. */
static void rms_norm(const float *x, const float *w, float *y, int C, float eps, int wide) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) ss += x[c] * x[c];
    float inv = 1.0f / sqrtf(ss / C + eps);
#pragma omp simd
    for (int c = 0; c < C; c++) y[c] = ROUND(wide, w[c] * ROUND(wide, x[c] * inv));
}

/* Rotary embedding of the first 2 * half dimensions of one head vector in place: "rotate half"
 * pairs dimension i with i + half, GPT-J's interleaved layout 2i with 2i + 1; cs holds the half
 * cosines then the half sines of its position. In bf16 each product and sum is rounded, as
 * apply_rotary's tensor operations round. */
static void rotate(float *v, const float *cs, int half, int interleaved, int wide) {
    const int step = interleaved ? 2 : 1, other = interleaved ? 1 : half;
    for (int i = 0; i < half; i++) {
        float *pa = v + i * step, *pb = pa + other;
        float a = *pa, b = *pb, c = cs[i], s = cs[half + i];
        *pa = ROUND(wide, ROUND(wide, a * c) + ROUND(wide, -b * s));
        *pb = ROUND(wide, ROUND(wide, b * c) + ROUND(wide, a * s));
    }
}

/* tanh as a ratio of two polynomials (odd degree 13 over even degree 6, the approximation Eigen
 * uses for float): within 4e-7 of tanh everywhere, and plain arithmetic, so the GELU loop
 * vectorises; libm's tanhf is a scalar call per element. */
#pragma omp declare simd
static inline float tanh_rational(float x) {
    const float limit = 7.90531110763549805f;  /* tanh rounds to +-1 beyond */
    float xc = x > limit ? limit : (x < -limit ? -limit : x), x2 = xc * xc;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return fabsf(x) < 0.0004f ? x : xc * p / q;
}

#pragma omp declare simd
static inline float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanh_rational(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* The key and value of query n for KV head kvh (D floats each) into the cache at its row and slot. */
static void store_kv(const Shape *s, const Queries *io, int l, int n, int kvh, const float *k, const float *v) {
    const int D = s->head_dim;
    size_t at = ((((size_t)l * s->batch + ROW(io, n)) * s->kv_heads + kvh) * s->max_len + SLOT(s, io, n)) * D;
    if (!s->bf16) {
        memcpy((float *)io->kcache + at, k, D * sizeof(float));
        memcpy((float *)io->vcache + at, v, D * sizeof(float));
        return;
    }
    for (int d = 0; d < D; d++) {
        ((bf16 *)io->kcache)[at + d] = bf16_bits(k[d]);
        ((bf16 *)io->vcache)[at + d] = bf16_bits(v[d]);
    }
}

/* Attention of query n's head h (q: D floats) over the slots 0..its own of its cache row, in KV
 * head h / (heads / kv_heads) (grouped-query attention), skipping pad slots (keep = 0) except its
 * own, as models.layers.attention_mask_for does; y receives D floats, p is T floats of scratch.
 * In bf16 the scores, the scaled scores, the softmax weights and y are rounded, as layers.attend's
 * tensor operations (the softmax itself in float32). */
INLINE void attend_of(const Shape *s, const Queries *io, int l, int n, int h, const float *q, float *y, float *p,
                      int wide) {
    const int D = s->head_dim, T = s->max_len, own = (int)SLOT(s, io, n);
    const int kvh = h / (s->heads / s->kv_heads);
    const size_t head_offset = (((size_t)l * s->batch + ROW(io, n)) * s->kv_heads + kvh) * T * D;
    const void *kc = (const char *)io->kcache + head_offset * (wide ? sizeof(bf16) : sizeof(float));
    const void *vc = (const char *)io->vcache + head_offset * (wide ? sizeof(bf16) : sizeof(float));
    const float scale = (float)(1.0 / sqrt((double)D));
    const unsigned char *real = io->keep ? io->keep + ROW(io, n) * io->keep_stride : 0;
    float best = -INFINITY;
    for (int t = 0; t <= own; t++) {
        if (real && t < own && !real[t]) {
            p[t] = -INFINITY;  /* a pad key; the query's own key is always kept */
            continue;
        }
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; d++) dot += q[d] * AT(wide, kc, (size_t)t * D + d);
        p[t] = ROUND(wide, ROUND(wide, dot) * scale);
        if (p[t] > best) best = p[t];
    }
    float sum = 0.0f;
    for (int t = 0; t <= own; t++) sum += (p[t] = expf(p[t] - best));
    for (int d = 0; d < D; d++) y[d] = 0.0f;
    for (int t = 0; t <= own; t++) {
        float pt = ROUND(wide, p[t] / sum);
        if (pt == 0.0f) continue;
#pragma omp simd
        for (int d = 0; d < D; d++) y[d] += pt * AT(wide, vc, (size_t)t * D + d);
    }
    for (int d = 0; d < D; d++) y[d] = ROUND(wide, y[d]);
}

static void attend(const Shape *s, const Queries *io, int l, int n, int h, const float *q, float *y, float *p) {
    if (s->bf16)
        attend_of(s, io, l, n, h, q, y, p, 1);
    else
        attend_of(s, io, l, n, h, q, y, p, 0);
}

/* The greedy tokens: argmax of each row of logits, first index of the maximum (as torch.argmax). */
static void argmax_rows(const Shape *s, const Queries *io) {
#pragma omp for
    for (int m = 0; m < s->outputs; m++) {
        const float *row = io->logits + (size_t)m * s->vocab;
        int best = 0;
        for (int o = 1; o < s->vocab; o++)
            if (row[o] > row[best]) best = o;
        io->argmax[m] = best;
    }
}

/* ---- GPT-2 ---- */
enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FC2_W, FC2_B, GPT2_PER_LAYER };
enum { GPT2_LNF_W, GPT2_LNF_B, GPT2_WTE, GPT2_WPE, GPT2_HEAD };

static size_t gpt2_partials(const Shape *s) {
    size_t N = s->queries, C = s->hidden, F = s->mlp, block = N * (3 * C > F ? 3 * C : F);
    size_t head = (size_t)s->outputs * s->vocab;
    return (size_t)s->threads * (block > head ? block : head);
}

/* Floats of scratch hangpt_gpt2_forward needs for this shape. */
size_t hangpt_gpt2_scratch(const Shape *s) {
    size_t N = s->queries, C = s->hidden;
    return N * (6 * C + s->mlp + (size_t)s->heads * s->max_len) + 2 * gpt2_partials(s);
}

/* The forward pass of N queries (tokens) against a KV cache of B rows, each query at its own cache
 * row and slot: decoding feeds one query per row at slot `past`; a short prompt feeds all its
 * tokens at once (the engine's prefill), query t of a row at slot t. Every query writes its key
 * and value at its slot, then attends to the slots 0..its own of its row (causal).
 * weights: GPT2_PER_LAYER pointers per layer, then ln_f weight, ln_f bias, wte, wpe, head ((hidden, vocab);
 * in bf16 (vocab, hidden)). In a bf16 model the matrices, wte, wpe and the head are bf16, the
 * vectors (norms, biases) float32. */
void hangpt_gpt2_forward(const Shape *s, const float *const *weights, const Queries *io) {
    const int L = s->layers, H = s->heads, C = s->hidden, F = s->mlp, N = s->queries, M = s->outputs, D = s->head_dim;
    const int wide = s->bf16 != 0;
    float *x = io->scratch, *h = x + (size_t)N * C, *qkv = h + (size_t)N * C, *att = qkv + 3 * (size_t)N * C;
    float *f = att + (size_t)N * C, *probs = f + (size_t)N * F, *partial_a = probs + (size_t)N * H * s->max_len;
    float *partial_b = partial_a + gpt2_partials(s);
    const float *const *top = weights + L * GPT2_PER_LAYER;

#pragma omp parallel num_threads(s->threads)
    {
#pragma omp for
        for (int n = 0; n < N; n++) {
            const size_t te = (size_t)io->tokens[n] * C, pe = (size_t)POSITION(s, io, n) * C;
            for (int c = 0; c < C; c++)
                x[(size_t)n * C + c] = ROUND(wide, AT(wide, top[GPT2_WTE], te + c) + AT(wide, top[GPT2_WPE], pe + c));
        }
        for (int l = 0; l < L; l++) {
            const float *const *w = weights + l * GPT2_PER_LAYER;
            layer_norm_band(x, 0, w[LN1_W], w[LN1_B], h, N, C, s->eps, wide);
            matmul(s, h, w[ATTN_W], w[ATTN_B], qkv, N, C, 3 * C, 0, partial_a);
#pragma omp barrier
#pragma omp for
            for (int nh = 0; nh < N * H; nh++) {  /* every query's key and value into its slot */
                const float *row = qkv + (size_t)(nh / H) * 3 * C + (nh % H) * D;
                store_kv(s, io, l, nh / H, nh % H, row + C, row + 2 * C);
            }
#pragma omp for
            for (int nh = 0; nh < N * H; nh++) {
                int n = nh / H, hd = nh % H;
                attend(s, io, l, n, hd, qkv + (size_t)n * 3 * C + hd * D, att + (size_t)n * C + hd * D,
                       probs + (size_t)nh * s->max_len);
            }
            matmul(s, att, w[PROJ_W], w[PROJ_B], x, N, C, C, 1, partial_b);
#pragma omp barrier
            layer_norm_band(x, 0, w[LN2_W], w[LN2_B], h, N, C, s->eps, wide);
            matmul(s, h, w[FC_W], w[FC_B], f, N, C, F, 0, partial_a);
            {
                /* GELU on the columns this thread has just summed, which are also the band of rows
                 * of the next matmul it reads: no barrier before, between, or after (the next
                 * matmul writes the other partial buffer while the other thread may still read
                 * this one) */
                int o0, o1;
                share(F, 16, &o0, &o1);
                for (int n = 0; n < N; n++) {
                    float *fn = f + (size_t)n * F;
#pragma omp simd
                    for (int o = o0; o < o1; o++) fn[o] = ROUND(wide, gelu_tanh(fn[o]));
                }
            }
            matmul(s, f, w[FC2_W], w[FC2_B], x, N, F, C, 1, partial_b);
#pragma omp barrier
        }
        /* only the queries asked for */
        layer_norm_band(x, io->out_rows, top[GPT2_LNF_W], top[GPT2_LNF_B], h, M, C, s->eps, wide);
        if (wide) {  /* the head as nn.Linear keeps it: a transposed copy would double its memory */
#pragma omp barrier
            linear(s, h, top[GPT2_HEAD], 0, io->logits, M, C, s->vocab, 0);
        } else
            matmul(s, h, top[GPT2_HEAD], 0, io->logits, M, C, s->vocab, 0, partial_a);
#pragma omp barrier
        argmax_rows(s, io);
    }
}

/* ---- the rotary families: Llama (llama, mistral, qwen2, qwen3), GPT-NeoX, GPT-J ---- */
/* per layer; a NULL pointer is an absent part (biases: Qwen2 has q/k/v ones, GPT-NeoX all, GPT-J
 * the MLP's; q/k norms: Qwen3; the gate: Llama's MLP only; the second norm: not GPT-J's). QKV_W is
 * GPT-NeoX's fused projection, rows laid out head by head [head, q|k|v, head_dim], read as it is
 * (then Q_W, K_W, V_W are NULL). Shape.layer_norm: the norms are LayerNorms with biases (*_NORM_B). */
enum { IN_NORM, IN_NORM_B, QKV_W, QKV_B, Q_W, Q_B, K_W, K_B, V_W, V_B, O_W, O_B, Q_NORM, K_NORM, POST_NORM,
       POST_NORM_B, GATE_W, GATE_B, UP_W, UP_B, DOWN_W, DOWN_B, ROTARY_PER_LAYER };
enum { FINAL_NORM, FINAL_NORM_B, EMBED, HEAD, HEAD_B, INV_FREQ };

/* Floats of scratch hangpt_rotary_forward needs for this shape. */
size_t hangpt_rotary_scratch(const Shape *s) {
    size_t N = s->queries, D = s->head_dim, H = s->heads;
    return N * (4 * (size_t)s->hidden + 4 * H * D + 2 * (size_t)s->mlp + H * s->max_len + D);
}

/* SiLU through the vectorised tanh: x * sigmoid(x) = x * (1 + tanh(x / 2)) / 2. */
#pragma omp declare simd
static inline float silu(float x) {
    return 0.5f * x * (1.0f + tanh_rational(0.5f * x));
}

/* The block norm of one row: RMSNorm or LayerNorm (Shape.layer_norm). */
static void norm_row(const Shape *s, const float *x, const float *w, const float *bias, float *y, int wide) {
    if (s->layer_norm)
        layer_norm_row(x, w, bias, y, s->hidden, 0, s->hidden, s->eps, wide);
    else
        rms_norm(x, w, y, s->hidden, s->eps, wide);
}

/* g[o] = act(g[o]) for o in [o0, o1), times u[o] when u is given (a gated MLP), rounded where torch's
 * bf16 forward rounds (the activation's result, then the product). In bf16 SiLU is torch's formula
 * with libm's exp (scalar, a few us a token): rounded, it equals torch's bf16 SiLU for every bf16
 * input, where the vectorised tanh, 4e-7 off in absolute terms, rounds a few tiny outputs (x < -7)
 * differently. GELU is the exact one (erf), as torch's "gelu". */
static void activate(float *restrict g, const float *restrict u, int o0, int o1, int kind, int wide) {
    switch (kind) {
    case ACT_SILU:
        if (wide)
            for (int o = o0; o < o1; o++) g[o] = round_bf16(g[o] / (1.0f + expf(-g[o])));
        else
#pragma omp simd
            for (int o = o0; o < o1; o++) g[o] = silu(g[o]);
        break;
    case ACT_GELU:
        for (int o = o0; o < o1; o++) g[o] = ROUND(wide, 0.5f * g[o] * (1.0f + erff(g[o] * 0.70710678118654752f)));
        break;
    case ACT_GELU_TANH:
#pragma omp simd
        for (int o = o0; o < o1; o++) g[o] = ROUND(wide, gelu_tanh(g[o]));
        break;
    default:
#pragma omp simd
        for (int o = o0; o < o1; o++) g[o] = g[o] > 0.0f ? g[o] : 0.0f;
    }
    if (u)
#pragma omp simd
        for (int o = o0; o < o1; o++) g[o] = ROUND(wide, g[o] * u[o]);
}

/* The same forward as hangpt_gpt2_forward (queries, cache rows and slots alike) for the families
 * with rotary positions and nn.Linear layouts, their differences in Shape's flags and in which
 * weights are NULL: Llama's sequential blocks of RMSNorms, q/k/v, rotate-half rotary on the whole
 * head, grouped-query attention and SwiGLU; GPT-NeoX's LayerNorms, fused q/k/v, partial rotary and
 * GELU MLP, its residual parallel or sequential; GPT-J's one LayerNorm feeding attention and MLP in
 * parallel and its interleaved partial rotary. weights: ROTARY_PER_LAYER pointers per layer, then
 * the final norm and its bias, the token embedding, the LM head (vocab, hidden; the embedding itself
 * when tied) and its bias, and the rotary inverse frequencies (rotary_dims / 2, the scaling of
 * rope_scaling already applied). In a bf16 model the matrices, the embedding and the head are bf16,
 * the vectors (norms, biases, frequencies) float32.
 * A parallel block sums as torch does, (attention + MLP) + x: the attention's output projection
 * writes `a`, the MLP's down projection adds to it, then each thread adds its band of `a` to x. */
void hangpt_rotary_forward(const Shape *s, const float *const *weights, const Queries *io) {
    const int L = s->layers, H = s->heads, Hkv = s->kv_heads, D = s->head_dim, C = s->hidden, F = s->mlp;
    const int wide = s->bf16 != 0;
    const int N = s->queries, M = s->outputs, T = s->max_len, half = s->rotary_dims / 2;
    float *x = io->scratch, *h = x + (size_t)N * C, *h2 = h + (size_t)N * C, *a = h2 + (size_t)N * C;
    float *qkv = a + (size_t)N * C, *att = qkv + 3 * (size_t)N * H * D, *g = att + (size_t)N * H * D;
    float *u = g + (size_t)N * F, *probs = u + (size_t)N * F, *rope = probs + (size_t)N * H * T;
    const float *const *top = weights + L * ROTARY_PER_LAYER;

#pragma omp parallel num_threads(s->threads)
    {
#pragma omp for
        for (int n = 0; n < N; n++) {  /* embeddings, and the cos/sin of each query's position */
            const size_t e = (size_t)io->tokens[n] * C;
            for (int c = 0; c < C; c++) x[(size_t)n * C + c] = AT(wide, top[EMBED], e + c);
            float pos = (float)POSITION(s, io, n);
            for (int i = 0; i < half; i++) {
                float angle = pos * top[INV_FREQ][i];
                rope[(size_t)n * D + i] = ROUND(wide, cosf(angle));
                rope[(size_t)n * D + half + i] = ROUND(wide, sinf(angle));
            }
        }
        for (int l = 0; l < L; l++) {
            const float *const *w = weights + l * ROTARY_PER_LAYER;
            /* where head hd of query n finds its q, k and v: fused (GPT-NeoX's [head, q|k|v, D] rows)
             * or three blocks, (N, H, D) then (N, Hkv, D) twice */
            const int fused = w[QKV_W] != 0;
            const size_t q_row = fused ? 3 * (size_t)H * D : (size_t)H * D, kv_row = fused ? q_row : (size_t)Hkv * D;
            const size_t head_step = fused ? 3 * (size_t)D : (size_t)D;
            float *q = qkv, *k = fused ? qkv + D : qkv + (size_t)N * H * D;
            float *v = fused ? qkv + 2 * D : k + (size_t)N * Hkv * D;
            /* the MLP's input: a second norm of x (parallel) or of x + attention (sequential), or the first */
            const float *mlp_in = s->parallel && !w[POST_NORM] ? h : h2;
#pragma omp for
            for (int n = 0; n < N; n++) {
                norm_row(s, x + (size_t)n * C, w[IN_NORM], w[IN_NORM_B], h + (size_t)n * C, wide);
                if (s->parallel && w[POST_NORM])
                    norm_row(s, x + (size_t)n * C, w[POST_NORM], w[POST_NORM_B], h2 + (size_t)n * C, wide);
            }
            if (fused)
                linear(s, h, w[QKV_W], w[QKV_B], qkv, N, C, 3 * H * D, 0);
            else {
                linear(s, h, w[Q_W], w[Q_B], q, N, C, H * D, 0);
                linear(s, h, w[K_W], w[K_B], k, N, C, Hkv * D, 0);
                linear(s, h, w[V_W], w[V_B], v, N, C, Hkv * D, 0);
            }
#pragma omp barrier
#pragma omp for
            for (int nh = 0; nh < N * Hkv; nh++) {  /* every query's key (normed, rotated) and value into its slot */
                int n = nh / Hkv, hd = nh % Hkv;
                float *kh = k + n * kv_row + hd * head_step;
                if (w[K_NORM]) rms_norm(kh, w[K_NORM], kh, D, s->eps, wide);
                rotate(kh, rope + (size_t)n * D, half, s->interleaved, wide);
                store_kv(s, io, l, n, hd, kh, v + n * kv_row + hd * head_step);
            }
#pragma omp for
            for (int nh = 0; nh < N * H; nh++) {
                int n = nh / H, hd = nh % H;
                float *qh = q + n * q_row + hd * head_step;
                if (w[Q_NORM]) rms_norm(qh, w[Q_NORM], qh, D, s->eps, wide);
                rotate(qh, rope + (size_t)n * D, half, s->interleaved, wide);
                attend(s, io, l, n, hd, qh, att + (size_t)nh * D, probs + (size_t)nh * T);
            }
            if (s->parallel)
                linear(s, att, w[O_W], w[O_B], a, N, H * D, C, 0);
            else {
                linear(s, att, w[O_W], w[O_B], x, N, H * D, C, 1);
#pragma omp barrier
#pragma omp for
                for (int n = 0; n < N; n++)
                    norm_row(s, x + (size_t)n * C, w[POST_NORM], w[POST_NORM_B], h2 + (size_t)n * C, wide);
            }
            if (w[GATE_W]) {
                linear(s, mlp_in, w[GATE_W], w[GATE_B], g, N, C, F, 0);
                linear(s, mlp_in, w[UP_W], w[UP_B], u, N, C, F, 0);
            } else
                linear(s, mlp_in, w[UP_W], w[UP_B], g, N, C, F, 0);
            {
                /* the activation on the band of columns this thread has just computed (the same
                 * band of gate and up); the down projection reads every column, hence the barrier */
                int o0, o1;
                share(F, 4, &o0, &o1);
                for (int n = 0; n < N; n++)
                    activate(g + (size_t)n * F, w[GATE_W] ? u + (size_t)n * F : 0, o0, o1, s->activation, wide);
            }
#pragma omp barrier
            linear(s, g, w[DOWN_W], w[DOWN_B], s->parallel ? a : x, N, F, C, 1);
            if (s->parallel) {  /* the band of `a` this thread wrote, twice (output projection, MLP) */
                int o0, o1;
                share(C, 4, &o0, &o1);
                for (int n = 0; n < N; n++)
#pragma omp simd
                    for (int o = o0; o < o1; o++) x[(size_t)n * C + o] = ROUND(wide, x[(size_t)n * C + o] + a[(size_t)n * C + o]);
            }
#pragma omp barrier
        }
#pragma omp for
        for (int m = 0; m < M; m++) {  /* the final norm of the queries asked for only */
            long long n = io->out_rows ? io->out_rows[m] : m;
            norm_row(s, x + (size_t)n * C, top[FINAL_NORM], top[FINAL_NORM_B], h + (size_t)m * C, wide);
        }
        linear(s, h, top[HEAD], top[HEAD_B], io->logits, M, C, s->vocab, 0);
#pragma omp barrier
        argmax_rows(s, io);
    }
}

/* ---- beam search helpers ---- */
/* In place: row b of the cache takes the first `filled` positions of row parents[b] (every layer,
 * keys and values; each (layer, row, KV head) is a contiguous block). Rows that keep their parent
 * are not touched, and a row is first saved to k_tmp/v_tmp only when it is overwritten while
 * another row still copies it, so the cache stays where it is (and in cache memory) instead of
 * being copied whole every step. */
void hangpt_reorder_cache(const Shape *s, const long long *parents, int filled, char *k, char *v, char *k_tmp,
                          char *v_tmp) {
    const int L = s->layers, H = s->kv_heads, B = s->batch, D = s->head_dim;
    const size_t size = s->bf16 ? sizeof(bf16) : sizeof(float);
    const size_t block = (size_t)s->max_len * D * size, bytes = (size_t)filled * D * size;
    unsigned char save[B];
    for (int r = 0; r < B; r++) {
        save[r] = 0;
        for (int b = 0; b < B && parents[r] != r; b++)
            if (b != r && parents[b] == r) save[r] = 1;
    }
#pragma omp parallel num_threads(s->threads)
    {
#pragma omp for collapse(2)
        for (int l = 0; l < L; l++)
            for (int r = 0; r < B; r++)
                for (int h = 0; h < H && save[r]; h++) {
                    size_t at = (((size_t)l * B + r) * H + h) * block;
                    memcpy(k_tmp + at, k + at, bytes);
                    memcpy(v_tmp + at, v + at, bytes);
                }
#pragma omp for collapse(2)
        for (int l = 0; l < L; l++)
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H && parents[b] != b; h++) {
                    size_t to = (((size_t)l * B + b) * H + h) * block, from = (((size_t)l * B + parents[b]) * H + h) * block;
                    memcpy(k + to, (save[parents[b]] ? k_tmp : k) + from, bytes);
                    memcpy(v + to, (save[parents[b]] ? v_tmp : v) + from, bytes);
                }
    }
}

/* The k largest values of each row of x (rows, n), in descending order, ties to the lower index:
 * one pass with a sorted list of the best k so far. For beam search's top 2 * num_beams of
 * num_beams * vocab scores, where torch.topk's partial sort costs 5-10x more. */
void hangpt_topk(const float *x, int rows, int n, int k, int threads, float *values, long long *indices) {
#pragma omp parallel for num_threads(threads) if (rows > 1)
    for (int r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * n;
        float *best = values + (size_t)r * k;
        long long *where = indices + (size_t)r * k;
        int count = 0;
        for (int i = 0; i < n; i++) {
            float value = row[i];
            if (count == k && !(value > best[k - 1])) continue;
            int j = count < k ? count++ : k - 1;
            for (; j > 0 && value > best[j - 1]; j--) {
                best[j] = best[j - 1];
                where[j] = where[j - 1];
            }
            best[j] = value;
            where[j] = i;
        }
    }
}

/* The GPT-2 forward for decoding, fused in C: the CPU fast path of the engine.
 *
 * Why: a decoding step of a small model feeds one token per row through the network, so each of
 * its ~100 tensor operations works on a few hundred floats, and in PyTorch each costs a dispatch
 * (5-15 us on a small VM) that dwarfs the arithmetic. Here a whole step (or a short prompt) runs
 * in one OpenMP parallel region (the same runtime torch uses, so torch.set_num_threads applies):
 * each thread streams its own band of every weight matrix's rows (a step reads all the weights
 * once, so memory bandwidth sets its speed), the attention is split by (query, head), and the
 * threads meet at a barrier only where one needs another's results. The math is exactly
 * model.py's (pre-LayerNorm blocks, GELU-tanh MLP, learned positions); hangpt/engine/fast.py
 * compiles this file, and tests check it against the PyTorch forward.
 *
 * Layouts: weights as in GPT-2 checkpoints, Conv1D (in, out) row-major; the LM head as its
 * transposed copy (n_embd, vocab); the KV cache (n_layer, B, n_head, max_len, head_dim).
 */
#include <math.h>
#include <string.h>
#include <omp.h>

enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FC2_W, FC2_B, PER_LAYER };

/* This thread's share [*lo, *hi) of n items, in multiples of `grain`. */
static void share(int n, int grain, int *lo, int *hi) {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int per = ((n + nt - 1) / nt + grain - 1) / grain * grain;
    *lo = t * per < n ? t * per : n;
    *hi = *lo + per < n ? *lo + per : n;
}

/* p[b, o] += sum over rows i in [i0, i1) of x[b, i] W[i, o], for one row of x: eight rows of W
 * at a time, so p is read and written once per eight rows of W. */
static void rows_one(const float *restrict x, const float *restrict W, float *restrict p, int out, int i0, int i1,
                     int ob, int oe) {
    int i = i0;
    for (; i + 8 <= i1; i += 8) {
        const float *w = W + (size_t)i * out;
        float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3], x4 = x[i + 4], x5 = x[i + 5], x6 = x[i + 6],
              x7 = x[i + 7];
#pragma omp simd
        for (int o = ob; o < oe; o++)
            p[o] += x0 * w[o] + x1 * w[out + o] + x2 * w[2 * out + o] + x3 * w[3 * out + o] + x4 * w[4 * out + o]
                  + x5 * w[5 * out + o] + x6 * w[6 * out + o] + x7 * w[7 * out + o];
    }
    for (; i < i1; i++) {
        const float *w = W + (size_t)i * out;
        float xi = x[i];
#pragma omp simd
        for (int o = ob; o < oe; o++) p[o] += xi * w[o];
    }
}

/* The same for four rows of x at once: each vector of W loaded feeds all four (beams, batches). */
static void rows_four(const float *restrict x, int in, const float *restrict W, float *restrict p, int out, int i0,
                      int i1, int ob, int oe) {
    float *restrict p0 = p, *restrict p1 = p + out, *restrict p2 = p + 2 * (size_t)out, *restrict p3 = p + 3 * (size_t)out;
    int i = i0;
    for (; i + 4 <= i1; i += 4) {
        const float *w = W + (size_t)i * out;
        const float *a = x + i, *b = x + in + i, *c = x + 2 * (size_t)in + i, *d = x + 3 * (size_t)in + i;
#pragma omp simd
        for (int o = ob; o < oe; o++) {
            float s0 = p0[o], s1 = p1[o], s2 = p2[o], s3 = p3[o];
            for (int j = 0; j < 4; j++) {
                float wj = w[j * out + o];
                s0 += a[j] * wj;
                s1 += b[j] * wj;
                s2 += c[j] * wj;
                s3 += d[j] * wj;
            }
            p0[o] = s0, p1[o] = s1, p2[o] = s2, p3[o] = s3;
        }
    }
    for (int r = 0; r < 4; r++) rows_one(x + (size_t)r * in, W, p + (size_t)r * out, out, i, i1, ob, oe);
}

/* y (B, out) = [y +] x (B, in) @ W (in, out) [+ bias], called by every thread of the team.
 * Each thread streams its own contiguous band of W's rows (one sequential read per thread is
 * what memory bandwidth rewards) into its partial sums, in blocks of columns that stay in L1;
 * after a barrier the threads add the partials up, each for its share of the columns. The order
 * of the additions depends only on the thread count, so results are repeatable. */
static void matmul(const float *restrict x, const float *restrict W, const float *restrict bias, float *restrict y,
                   int B, int in, int out, int accumulate, float *restrict partial) {
    int i0, i1, o0, o1, nt = omp_get_num_threads();
    share(in, 16, &i0, &i1);
    float *mine = partial + (size_t)omp_get_thread_num() * B * out;
    memset(mine, 0, (size_t)B * out * sizeof(float));
    const int block = 1024;
    for (int ob = 0; ob < out; ob += block) {
        int oe = ob + block < out ? ob + block : out, b = 0;
        for (; b + 4 <= B; b += 4)
            rows_four(x + (size_t)b * in, in, W, mine + (size_t)b * out, out, i0, i1, ob, oe);
        for (; b < B; b++) rows_one(x + (size_t)b * in, W, mine + (size_t)b * out, out, i0, i1, ob, oe);
    }
#pragma omp barrier
    share(out, 16, &o0, &o1);
    for (int b = 0; b < B; b++) {
        float *yb = y + (size_t)b * out;
        for (int o = o0; o < o1; o++) {
            float sum = (accumulate ? yb[o] : 0.0f) + (bias ? bias[o] : 0.0f);
            for (int k = 0; k < nt; k++) sum += partial[((size_t)k * B + b) * out + o];
            yb[o] = sum;
        }
    }
}

/* LayerNorm of rows of x into the rows of y (y row r from x row `pick[r]`, or row r when pick is
 * NULL), this thread writing only its band of the columns: the band of rows of W that its next
 * matmul reads, so no barrier is needed in between (the statistics of the whole row are cheap
 * to compute in every thread). */
static void layer_norm_band(const float *x, const long long *pick, const float *w, const float *bias, float *y,
                            int count, int C, float eps) {
    int c0, c1;
    share(C, 16, &c0, &c1);
    for (int r = 0; r < count; r++) {
        const float *xr = x + (size_t)(pick ? pick[r] : r) * C;
        float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+ : mean)
        for (int c = 0; c < C; c++) mean += xr[c];
        mean /= C;
#pragma omp simd reduction(+ : var)
        for (int c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
        float inv = 1.0f / sqrtf(var / C + eps);
#pragma omp simd
        for (int c = c0; c < c1; c++) y[(size_t)r * C + c] = (xr[c] - mean) * inv * w[c] + bias[c];
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

/* The forward pass of N queries (tokens) against a KV cache of B rows, each query at its own cache
 * row and slot: decoding feeds one query per row at slot `past`; a short prompt feeds all its
 * tokens at once (the engine's prefill), query t of a row at slot t. Every query writes its key
 * and value at its slot, then attends to the slots 0..its own of its row (causal), skipping pad
 * slots (keep = 0) except its own, as model.attention_mask_for does.
 *
 * dims: n_layer, n_head, n_embd, n_inner, N, max_len, B, threads, past.
 * weights: PER_LAYER pointers per layer, then ln_f weight, ln_f bias, wte, wpe, head (n_embd, vocab).
 * tokens, positions, rows, slots: N each; NULL rows means query n is row n, NULL slots means every
 * slot is `past`, NULL positions means each position is the slot (a decoding step without padding). keep: B rows of keep_stride bytes (1 = a real token) or
 * NULL. out_rows: the M queries whose next-token logits are wanted (NULL: all N, M = N); logits (M, vocab) and argmax
 * (M: the greedy tokens, first index of the maximum as torch.argmax) receive them.
 * scratch: N * (6 n_embd + n_inner + n_head * max_len) + 2 * threads * max(N * max(3 n_embd,
 * n_inner), M * vocab) floats. */
void hangpt_forward(const int *dims, int vocab, float eps, const float *const *weights, const long long *tokens,
                    const long long *positions, const long long *rows, const long long *slots,
                    const unsigned char *keep, long long keep_stride, float *kcache, float *vcache,
                    const long long *out_rows, int M, float *logits, long long *argmax, float *scratch) {
    const int L = dims[0], H = dims[1], C = dims[2], F = dims[3], N = dims[4], T = dims[5], B = dims[6];
    const int threads = dims[7], past = dims[8], D = C / H;
#define ROW(n) (rows ? rows[n] : (long long)(n))
#define SLOT(n) (slots ? slots[n] : (long long)past)
    const float scale = 1.0f / sqrtf((float)D);
    const size_t widest_block = (size_t)N * (3 * C > F ? 3 * C : F), widest_head = (size_t)M * vocab;
    float *x = scratch, *h = x + (size_t)N * C, *qkv = h + (size_t)N * C, *att = qkv + 3 * (size_t)N * C;
    float *f = att + (size_t)N * C, *probs = f + (size_t)N * F, *partial_a = probs + (size_t)N * H * T;
    float *partial_b = partial_a + threads * (widest_block > widest_head ? widest_block : widest_head);
    const float *const *top = weights + L * PER_LAYER;

#pragma omp parallel num_threads(threads)
    {
#pragma omp for
        for (int n = 0; n < N; n++) {
            const float *te = top[2] + (size_t)tokens[n] * C, *pe = top[3] + (size_t)(positions ? positions[n] : SLOT(n)) * C;
            for (int c = 0; c < C; c++) x[(size_t)n * C + c] = te[c] + pe[c];
        }
        for (int l = 0; l < L; l++) {
            const float *const *w = weights + l * PER_LAYER;
            layer_norm_band(x, 0, w[LN1_W], w[LN1_B], h, N, C, eps);
            matmul(h, w[ATTN_W], w[ATTN_B], qkv, N, C, 3 * C, 0, partial_a);
#pragma omp barrier
#pragma omp for
            for (int nh = 0; nh < N * H; nh++) {  /* every query's key and value into its slot */
                int n = nh / H, hd = nh % H;
                size_t at = ((((size_t)l * B + ROW(n)) * H + hd) * T + SLOT(n)) * D;
                memcpy(kcache + at, qkv + (size_t)n * 3 * C + C + hd * D, D * sizeof(float));
                memcpy(vcache + at, qkv + (size_t)n * 3 * C + 2 * C + hd * D, D * sizeof(float));
            }
#pragma omp for
            for (int nh = 0; nh < N * H; nh++) {
                int n = nh / H, hd = nh % H, own = (int)SLOT(n);
                size_t head_offset = (((size_t)l * B + ROW(n)) * H + hd) * T * D;
                const float *kc = kcache + head_offset, *vc = vcache + head_offset;
                const float *q = qkv + (size_t)n * 3 * C + hd * D;
                const unsigned char *real = keep ? keep + ROW(n) * keep_stride : 0;
                float *p = probs + (size_t)nh * T, best = -INFINITY;
                for (int t = 0; t <= own; t++) {
                    if (real && t < own && !real[t]) {
                        p[t] = -INFINITY;  /* a pad key; the query's own key is always kept */
                        continue;
                    }
                    float s = 0.0f;
#pragma omp simd reduction(+ : s)
                    for (int d = 0; d < D; d++) s += q[d] * kc[(size_t)t * D + d];
                    p[t] = s * scale;
                    if (p[t] > best) best = p[t];
                }
                float sum = 0.0f;
                for (int t = 0; t <= own; t++) sum += (p[t] = expf(p[t] - best));
                float *y = att + (size_t)n * C + hd * D;
                for (int d = 0; d < D; d++) y[d] = 0.0f;
                for (int t = 0; t <= own; t++) {
                    float pt = p[t] / sum;
                    if (pt == 0.0f) continue;
#pragma omp simd
                    for (int d = 0; d < D; d++) y[d] += pt * vc[(size_t)t * D + d];
                }
            }
            matmul(att, w[PROJ_W], w[PROJ_B], x, N, C, C, 1, partial_b);
#pragma omp barrier
            layer_norm_band(x, 0, w[LN2_W], w[LN2_B], h, N, C, eps);
            matmul(h, w[FC_W], w[FC_B], f, N, C, F, 0, partial_a);
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
                    for (int o = o0; o < o1; o++) fn[o] = gelu_tanh(fn[o]);
                }
            }
            matmul(f, w[FC2_W], w[FC2_B], x, N, F, C, 1, partial_b);
#pragma omp barrier
        }
        layer_norm_band(x, out_rows, top[0], top[1], h, M, C, eps);  /* only the queries asked for (NULL: all) */
        matmul(h, top[4], 0, logits, M, C, vocab, 0, partial_a);
#pragma omp barrier
#pragma omp for
        for (int m = 0; m < M; m++) {
            const float *row = logits + (size_t)m * vocab;
            int best = 0;
            for (int o = 1; o < vocab; o++)
                if (row[o] > row[best]) best = o;
            argmax[m] = best;
        }
    }
#undef ROW
#undef SLOT
}

/* Beam search, in place: row b of the cache takes the first `filled` positions of row
 * parents[b] (every layer, keys and values; each (layer, row, head) is a contiguous block).
 * Rows that keep their parent are not touched, and a row is first saved to k_tmp/v_tmp only
 * when it is overwritten while another row still copies it, so the cache stays where it is (and
 * in cache memory) instead of being copied whole every step. dims as above. */
void hangpt_reorder_cache(const int *dims, const long long *parents, int filled, float *k, float *v, float *k_tmp,
                          float *v_tmp) {
    const int L = dims[0], H = dims[1], C = dims[2], B = dims[6], T = dims[5], threads = dims[7];
    const int D = C / H;
    const size_t block = (size_t)T * D, bytes = (size_t)filled * D * sizeof(float);
    unsigned char save[B];
    for (int r = 0; r < B; r++) {
        save[r] = 0;
        for (int b = 0; b < B && parents[r] != r; b++)
            if (b != r && parents[b] == r) save[r] = 1;
    }
#pragma omp parallel num_threads(threads)
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

/* CPU float32 kernels of adapters/elementwise.py: one pass over a flat block of Z = B·A per call.
 *
 * Built at first use with the system C compiler (-O3 -march=native -fopenmp) and called through
 * ctypes (elementwise._native_library). GCC/Clang vector extensions: NV vectors of VW floats per
 * step. Each call splits its n elements over `threads` OpenMP threads (torch's libgomp, already
 * loaded, serves the pragmas, so no second thread pool competes with torch's).
 *
 * With v = in·z and φ the method's function:
 *   *_forward:  merged = w0 + out·φ(v)                     (w0 may be NULL: merged = ΔW)
 *   *_backward: merged as above (skipped if NULL), dz = in·out·gm·φ′(v), and
 *               for sinc da[i·G + g] = out·Σ gm·s_g, wg[i·G + g] = out·Σ gm·w_g over thread i's
 *               elements (s_g = sinc t_g, w_g = cos πt_g − s_g; da, wg hold threads × G floats).
 * sinc: φ(v) = Σ_g a_g sinc(t_g) [+ v] − phi0, t_g = b_g (v − c_g). A block's inputs are read
 * before its outputs are written, so merged may alias z and dz may alias gm.
 *
 * sin πt and cos πt share one reduction t = k + f, |f| ≤ 1/2 (exact in float32 for |t| < 2^22),
 * then Taylor polynomials in x = πf to degree 13 / 14 (truncation below 1e-9), sign (−1)^k.
 */
#include <omp.h>
#include <string.h>

#define VW 16
#define NV 4
#define BLOCK (VW * NV)
#define PI_F 3.14159265358979f
#define INV_PI_F 0.318309886183791f
#define MAGIC 12582912.0f /* 1.5·2^23: (t + MAGIC) − MAGIC is t rounded to an integer */
#define TAYLOR_BELOW 0.1f /* |t| under which sinc′ uses its series (as elementwise.TAYLOR_BELOW) */

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int vi __attribute__((vector_size(VW * 4)));

static inline vf splat(float x) { return (vf){0} + x; }
static inline vf select(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }
static inline vf vabs(vf x) { return (vf)((vi)x & 0x7fffffff); }

/* sin πt, and cos πt into *c when c is not NULL */
static inline vf sincospi(vf t, vf *c) {
    vf big = t + MAGIC;
    vi odd = ((vi)big & 1) << 31;
    vf x = PI_F * (t - (big - MAGIC)), x2 = x * x;
    vf s = x * (1.f + x2 * (-1.f / 6 + x2 * (1.f / 120 + x2 * (-1.f / 5040 + x2 * (1.f / 362880
            + x2 * (-1.f / 39916800 + x2 * (1.f / 6227020800.f)))))));
    if (c) {
        vf cs = 1.f + x2 * (-1.f / 2 + x2 * (1.f / 24 + x2 * (-1.f / 720 + x2 * (1.f / 40320
                 + x2 * (-1.f / 3628800 + x2 * (1.f / 479001600.f + x2 * (-1.f / 87178291200.f)))))));
        *c = (vf)((vi)cs ^ odd);
    }
    return (vf)((vi)s ^ odd);
}

/* Elements go in blocks of BLOCK, the last one zero-padded through a local buffer. */
static inline long block_len(long n, long j) { return n - j < BLOCK ? n - j : BLOCK; }

static inline void load(vf *dst, const float *src, long m) {
    float buf[BLOCK] __attribute__((aligned(64))) = {0};
    if (src) memcpy(buf, src, m * sizeof(float));
    memcpy(dst, buf, sizeof buf);
}

static inline void store(float *dst, const vf *src, long m) {
    if (dst) memcpy(dst, src, m * sizeof(float));
}

/* The calling thread's share [*lo, *hi) of n elements, in whole blocks. */
static inline void share(long n, long *lo, long *hi) {
    long blocks = (n + BLOCK - 1) / BLOCK, t = omp_get_thread_num(), nt = omp_get_num_threads();
    *lo = blocks * t / nt * BLOCK;
    *hi = blocks * (t + 1) / nt * BLOCK;
    if (*hi > n) *hi = n;
}

void sinc_forward(int threads, long n, const float *z, const float *w0, float *merged, float in,
                  float out, long G, const float *a, const float *b, const float *c, int residual,
                  float phi0) {
#pragma omp parallel num_threads(threads)
    {
        long lo, hi;
        share(n, &lo, &hi);
        for (long j = lo; j < hi; j += BLOCK) {
            long m = block_len(n, j);
            vf v[NV], base[NV], phi[NV];
            load(v, z + j, m);
            load(base, w0 ? w0 + j : NULL, m);
            for (int i = 0; i < NV; ++i) {
                v[i] *= in;
                phi[i] = residual ? v[i] - phi0 : splat(-phi0);
            }
            for (long k = 0; k < G; ++k) {
                float ak = a[k], bk = b[k], ck = c[k];
                for (int i = 0; i < NV; ++i) {
                    vf t = bk * (v[i] - ck);
                    vi zero = t == 0.f;
                    vf s = select(zero, splat(1.f), sincospi(t, NULL) / select(zero, splat(1.f), PI_F * t));
                    phi[i] += ak * s;
                }
            }
            for (int i = 0; i < NV; ++i) base[i] += out * phi[i];
            store(merged + j, base, m);
        }
    }
}

void sinc_backward(int threads, long n, const float *z, const float *gm, const float *w0,
                   float *merged, float *dz, float in, float out, long G, const float *a,
                   const float *b, const float *c, int residual, float phi0, float *da, float *wg) {
#pragma omp parallel num_threads(threads)
    {
        long lo, hi;
        share(n, &lo, &hi);
        vf da_acc[G], wg_acc[G];
        memset(da_acc, 0, sizeof da_acc);
        memset(wg_acc, 0, sizeof wg_acc);
        for (long j = lo; j < hi; j += BLOCK) {
            long m = block_len(n, j);
            vf v[NV], g[NV], base[NV], phi[NV], slope[NV];
            load(v, z + j, m);
            load(g, gm + j, m);
            load(base, w0 && merged ? w0 + j : NULL, m);
            for (int i = 0; i < NV; ++i) {
                v[i] *= in;
                phi[i] = residual ? v[i] - phi0 : splat(-phi0);
                slope[i] = splat(residual ? 1.f : 0.f);
            }
            for (long k = 0; k < G; ++k) {
                float ak = a[k], bk = b[k], ck = c[k], abk = a[k] * b[k];
                vf dak = {0}, wgk = {0};
                for (int i = 0; i < NV; ++i) {
                    vf t = bk * (v[i] - ck), x = PI_F * t, cs;
                    vf sn = sincospi(t, &cs);
                    vi zero = t == 0.f;
                    vf r = 1.f / select(zero, splat(1.f), x);
                    vf s = select(zero, splat(1.f), sn * r);
                    vf w = cs - s;
                    vf x2 = x * x;
                    vf series = PI_F * x * (-1.f / 3 + x2 * (1.f / 30 + x2 * (-1.f / 840 + x2 * (1.f / 45360))));
                    phi[i] += ak * s;
                    slope[i] += abk * select(vabs(t) < TAYLOR_BELOW, series, PI_F * w * r); /* a·b·sinc′(t) */
                    dak += g[i] * s;
                    wgk += g[i] * w;
                }
                da_acc[k] += dak;
                wg_acc[k] += wgk;
            }
            for (int i = 0; i < NV; ++i) {
                base[i] += out * phi[i];
                slope[i] *= in * out * g[i];
            }
            store(merged ? merged + j : NULL, base, m);
            store(dz + j, slope, m);
        }
        float *da_t = da + omp_get_thread_num() * G, *wg_t = wg + omp_get_thread_num() * G;
        for (long k = 0; k < G; ++k) {
            float sum_s = 0, sum_w = 0;
            for (int l = 0; l < VW; ++l) {
                sum_s += da_acc[k][l];
                sum_w += wg_acc[k][l];
            }
            da_t[k] = out * sum_s;
            wg_t[k] = out * sum_w;
        }
    }
}

void sine_forward(int threads, long n, const float *z, const float *w0, float *merged, float in, float out) {
#pragma omp parallel num_threads(threads)
    {
        long lo, hi;
        share(n, &lo, &hi);
        for (long j = lo; j < hi; j += BLOCK) {
            long m = block_len(n, j);
            vf v[NV], base[NV];
            load(v, z + j, m);
            load(base, w0 ? w0 + j : NULL, m);
            for (int i = 0; i < NV; ++i) base[i] += out * sincospi((in * INV_PI_F) * v[i], NULL);
            store(merged + j, base, m);
        }
    }
}

void sine_backward(int threads, long n, const float *z, const float *gm, const float *w0,
                   float *merged, float *dz, float in, float out) {
#pragma omp parallel num_threads(threads)
    {
        long lo, hi;
        share(n, &lo, &hi);
        for (long j = lo; j < hi; j += BLOCK) {
            long m = block_len(n, j);
            vf v[NV], g[NV], base[NV], slope[NV];
            load(v, z + j, m);
            load(g, gm + j, m);
            load(base, w0 && merged ? w0 + j : NULL, m);
            for (int i = 0; i < NV; ++i) {
                vf cs;
                base[i] += out * sincospi((in * INV_PI_F) * v[i], &cs);
                slope[i] = (in * out) * g[i] * cs;
            }
            store(merged ? merged + j : NULL, base, m);
            store(dz + j, slope, m);
        }
    }
}

/* Fused FeLIF fine path: bruno.felif.euler_step for many neurons, SIMD across neurons.
 *
 * This file is the only restatement of the FeLIF equations outside bruno/felif.py
 * (tests/test_bruno_fine_path.py pins it to bruno.felif.euler_step). The equations, with the
 * per-neuron coefficients packed by bruno/kernels/ffi.py (``COEFFICIENTS`` there, same order as the
 * C_* indices below):
 *
 *   E      = field_v * v - field_p * P                       (ferroelectric_field)
 *   u      = exp(alpha * (log Ea - log(|E| + E_soft)))  = (Ea / (|E| + E_soft))^alpha
 *   rate   = exp(-u) / tau0                                  (switching_rate)
 *   D      = sign(E) Ps - P                                  (distance to the target)
 *   S      = D sign(E) rate alpha u / (|E| + E_soft)         (D r'(E) >= 0)
 *   lam    = -rate + S * feedback                            (feedback_field_coefficient)
 *   b      = (gain I_in - I_leak(v)) / C_tot,  I_leak = sign(v) (I0 A (exp(v / Vt) - 1) + I_dsc)
 *            (0 where v sits at a clip and b pushes outwards: the clamp junction takes it)
 *   dP     = dt phi1(lam dt) D rate + dt^2 phi2(lam dt) S field_v b,  clamped to [-Ps - P, Ps - P]
 *   P'     = P + dP
 *   v'     = clamp(v + dt b - A dP / C_tot, -V_CLIP, V_CLIP)  (euler_step: exponential
 *                                                            Rosenbrock-Euler, charge-conserving)
 *
 * phi1(z) = (e^z - 1) / z, phi2(z) = (e^z - 1 - z) / z^2, by their Taylor series below
 * |z| = PHI_SERIES (bruno.felif.phi_functions); lam <= 0, so z <= 0 and e^z - 1 loses at most
 * ~1 digit where the closed form is used (|z| >= PHI_SERIES).
 *
 * Layout: the time loop is outside, an inner loop over a block of neurons runs under
 * `#pragma omp simd` (exp/log inlined below); blocks are spread over OpenMP threads only when
 * there are enough neurons to fill them. A block's last (size mod TAIL_LANES) neurons run as one
 * padded full vector (tail_*), never lane by lane.
 *
 * Two spike modes:
 *   HOLD  (trainers, SPEC section 3): a neuron whose membrane exceeds threshold stops
 *         integrating for the rest of the call; `held[i]` is read at entry and written at exit.
 *         The input current is constant over the call (i_stride = 0) or per step.
 *         With `tangents` (6 x n, rows dv/dv0, dv/dP0, dv/dI, dP/dv0, dP/dP0, dP/dI; read at
 *         entry, written at exit) the kernel also propagates, in forward mode, the exact Jacobian
 *         of the call's map (v0, P0, I) -> (v, P) through every step (FELIF_TANGENT_STEP): BRUNO's
 *         "exact" coarse gradient, O(1) memory per neuron. A held neuron's tangents stop changing;
 *         the step that crosses threshold still counts, as in bruno.felif.hold_step.
 *   RESET (device simulation, bruno.device.simulate): a neuron crossing threshold at a step is
 *         reset to (reset_voltage, -Ps) at that step; `fired[k * n + i]` records it.
 */
#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum {
    C_FIELD_V = 0,
    C_FIELD_P,
    C_LOG_EA,
    C_SOFT_FIELD,
    C_ALPHA,
    C_INV_TAU0,
    C_PS,
    C_AREA,
    C_LEAK_I0A,
    C_INV_VT,
    C_I_DSC,
    C_GAIN,
    C_INV_C,
    C_THRESHOLD,
    C_RESET_V,
    C_FEEDBACK,
    C_COUNT
};

/* The constants shared with bruno/felif.py come from it: bruno/kernels/build.py passes them as -D flags
 * (and they are part of the build key), so they are never restated here. */
#if !defined(BRUNO_ABI_VERSION) || !defined(BRUNO_V_CLIP) || !defined(BRUNO_PHI_SERIES) || \
    !defined(BRUNO_TAIL_LANES) || !defined(BRUNO_TANGENTS)
#error "build through `python -m bruno.kernels build`: it defines the BRUNO_* constants"
#endif
#define V_CLIP BRUNO_V_CLIP         /* bruno.felif.V_CLIP */
#define PHI_SERIES BRUNO_PHI_SERIES /* bruno.felif.PHI_SERIES */

int bruno_felif_abi_version(void) { return BRUNO_ABI_VERSION; }
int bruno_felif_coefficient_count(void) { return C_COUNT; }
int bruno_felif_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}


/* float32 exp/log: branch-free Cephes-style polynomials (about 1 ulp on the ranges used here),
 * inlined so that the SIMD loop keeps its registers instead of calling libmvec four times per
 * neuron step; they about double the float32 throughput. Define BRUNO_LIBM_FLOAT to use libm
 * (libmvec) instead. float64 always uses libm. */
static inline float bruno_expf(float x) {
    x = fminf(fmaxf(x, -87.0f), 88.0f);
#if defined(__x86_64__) && !defined(__SSE4_1__)
    /* plain SSE2 has no vector floor: round through a truncating conversion */
    const float t = x * 1.44269504088896341f;
    const float n = (float)(int32_t)(t + (t < 0.0f ? -0.5f : 0.5f));
#else
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
#endif
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    q = q * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return q * scale;
}

static inline float bruno_logf(float x) { /* x > 0, normal */
    int32_t bits;
    __builtin_memcpy(&bits, &x, sizeof bits);
    float e = (float)(((bits >> 23) & 0xff) - 126);
    bits = (bits & 0x807fffff) | 0x3f000000;
    float m;
    __builtin_memcpy(&m, &bits, sizeof m);
    const int small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    m = (small ? m + m : m) - 1.0f;
    const float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y = y - 2.12194440e-4f * e;
    y = y - 0.5f * z;
    return m + y + 0.693359375f * e;
}

#ifdef BRUNO_LIBM_FLOAT
#define BRUNO_EXPF expf
#define BRUNO_LOGF logf
#else
#define BRUNO_EXPF bruno_expf
#define BRUNO_LOGF bruno_logf
#endif

/* One fine step of the FeLIF compact model from (v[i], p[i]) to (vn, pn): the C statement of
 * bruno/felif.py::euler_step (field, switching rate and its feedback eigenvalue, the phi-weighted
 * polarisation increment, leak, charge-conserving membrane update, clamps). Every kernel mode
 * expands it; only the spike handling after it differs. The intermediates are named for
 * FELIF_LOCAL_JACOBIAN. */
#define FELIF_NEXT_STATE(T, EXP, LOG, FABS, FMIN, FMAX)                                             \
    const T vi = v[i], pi = p[i];                                                                   \
    const T e = fv[i] * vi - fp[i] * pi;                                                            \
    const T ae = FABS(e) + es[i];                                                                   \
    const T ex = EXP(al[i] * (lea[i] - LOG(ae)));                                                   \
    const T rate = EXP(-ex) * it0[i];                                                               \
    const T se = (e > zero) ? one : ((e < zero) ? -one : zero);                                     \
    const T sv = (vi > zero) ? one : ((vi < zero) ? -one : zero);                                   \
    const T dist = se * ps[i] - pi;                                                                 \
    const T sens = dist * se * rate * al[i] * ex / ae;                                              \
    const T lam = -rate + sens * kf[i];                                                             \
    const T z = lam * dt;                                                                           \
    const int small = FABS(z) < phs;                                                                \
    const T zs = small ? one : z;                                                                   \
    const T em = EXP(zs) - one;                                                                     \
    const T phi1 = small ? one + z * (c2 + z * (c6 + z * (c24 + z * (c120 + z * c720))))           \
                         : em / zs;                                                                 \
    const T phi2 = small ? c2 + z * (c6 + z * (c24 + z * (c120 + z * (c720 + z * c5040))))         \
                         : (em - zs) / (zs * zs);                                                   \
    const T ev = EXP(vi * ivt[i]);                                                                  \
    const T leak = sv * (i0a[i] * (ev - one) + idsc[i]);                                            \
    const T drive_in = (gain[i] * ik[i] - leak) * ic[i];                                            \
    const int pinned = (vi >= vclip && drive_in > zero) || (vi <= -vclip && drive_in < zero);       \
    const T drive = pinned ? zero : drive_in; /* at the clip the junction takes it */               \
    const T inc = dt * phi1 * dist * rate + dt * dt * phi2 * sens * fv[i] * drive;                  \
    const T lo = -ps[i] - pi, hi = ps[i] - pi;                                                      \
    const T incc = FMIN(FMAX(inc, lo), hi);                                                         \
    const T pn = pi + incc;                                                                         \
    const T vu = vi + dt * drive - ar[i] * incc * ic[i];                                            \
    const T vn = FMIN(FMAX(vu, -vclip), vclip);

/* The local Jacobian of the step, after FELIF_NEXT_STATE: a_vv, a_vp, a_vi, a_pv, a_pp, a_pi =
 * d(vn, pn)/d(vi, pi, I), under torch autograd's conventions for bruno.felif.euler_step
 * (tests/test_bruno_fine_path.py checks them against autograd): d|E|/dE = sign(E) (0 at E = 0),
 * sign() has zero derivative, each phi's derivative is that of the branch evaluated (series or
 * closed form), the increment's clamp (torch.clamp with tensor bounds) passes the derivative to
 * the increment where lo <= inc <= hi (ties inclusive) and to the bound P-dependent bound strictly
 * outside, and the membrane clamp passes it where -V_CLIP <= vu <= V_CLIP. */
#define FELIF_LOCAL_JACOBIAN(T)                                                                     \
    const T se2 = se * se;                                                                          \
    const T drate = rate * al[i] * ex * se / ae; /* d rate / dE */                                  \
    const T dsens = se2 * dist * al[i] * rate * ex / (ae * ae) * (al[i] * ex - al[i] - one);        \
    const T psens = -se * rate * al[i] * ex / ae; /* d sens / dP through D */                       \
    const T dlam = -drate + kf[i] * dsens, plam = kf[i] * psens;                                    \
    const T dphi1 = small ? c2 + z * (2 * c6 + z * (3 * c24 + z * (4 * c120 + z * 5 * c720)))      \
                          : (em + one - phi1) / zs;                                                 \
    const T dphi2 = small ? c6 + z * (2 * c24 + z * (3 * c120 + z * (4 * c720 + z * 5 * c5040)))   \
                          : (phi1 - 2 * phi2) / zs;                                                 \
    const T w2 = dt * dt * fv[i] * drive;                                                           \
    const T inc_e = dt * (dphi1 * dt * dlam * dist * rate + phi1 * dist * drate) +                  \
                    w2 * (dphi2 * dt * dlam * sens + phi2 * dsens);                                 \
    const T inc_p = dt * (dphi1 * dt * plam * dist * rate - phi1 * rate) +                          \
                    w2 * (dphi2 * dt * plam * sens + phi2 * psens);                                 \
    const T inc_b = dt * dt * phi2 * sens * fv[i];                                                  \
    const T db_dv = pinned ? zero : -sv * i0a[i] * ev * ivt[i] * ic[i];                             \
    const T db_di = pinned ? zero : gain[i] * ic[i];                                                \
    const T gx = (inc >= lo && inc <= hi) ? one : zero;                                             \
    const T gb = (inc < lo || inc > hi) ? one : zero; /* the bound's own d/dP is -1 */              \
    const T a_pv = gx * (inc_e * fv[i] + inc_b * db_dv);                                            \
    const T a_pp = one + gx * (inc_p - inc_e * fp[i]) - gb;                                         \
    const T a_pi = gx * inc_b * db_di;                                                              \
    const T gv = (vu >= -vclip && vu <= vclip) ? one : zero;                                        \
    const T aic = ar[i] * ic[i];                                                                    \
    const T a_vv = gv * (one + dt * db_dv - aic * a_pv);                                            \
    const T a_vp = gv * aic * (one - a_pp);                                                         \
    const T a_vi = gv * (dt * db_di - aic * a_pi);

#define TAIL_LANES BRUNO_TAIL_LANES /* ffi.TAIL_LANES: a block's remainder runs as one vector of it */
#define TANGENTS BRUNO_TANGENTS     /* ffi.TANGENTS: rows of the tangent buffer */
#define TANGENT_CHUNK 256 /* neurons per pass of the tangent variant (its scratch: 6 x this) */

#define DEFINE_KERNEL(T, SUFFIX, EXP, LOG, FABS, FMIN, FMAX)                                       \
    static void block_##SUFFIX(int64_t lo, int64_t hi, int64_t n, int64_t steps, T dt,            \
                               T *restrict v, T *restrict p, const T *restrict current,            \
                               int64_t i_stride, const T *const *coef, int mode,                   \
                               uint8_t *restrict held, uint8_t *restrict fired,                    \
                               T *restrict v_rec, T *restrict p_rec, int64_t record_every,         \
                               T *restrict tan) {                                                  \
        const T *restrict fv = coef[C_FIELD_V];                                                     \
        const T *restrict fp = coef[C_FIELD_P];                                                     \
        const T *restrict lea = coef[C_LOG_EA];                                                     \
        const T *restrict es = coef[C_SOFT_FIELD];                                                  \
        const T *restrict al = coef[C_ALPHA];                                                       \
        const T *restrict it0 = coef[C_INV_TAU0];                                                   \
        const T *restrict ps = coef[C_PS];                                                          \
        const T *restrict ar = coef[C_AREA];                                                        \
        const T *restrict i0a = coef[C_LEAK_I0A];                                                   \
        const T *restrict ivt = coef[C_INV_VT];                                                     \
        const T *restrict idsc = coef[C_I_DSC];                                                     \
        const T *restrict gain = coef[C_GAIN];                                                      \
        const T *restrict ic = coef[C_INV_C];                                                       \
        const T *restrict thr = coef[C_THRESHOLD];                                                  \
        const T *restrict rv = coef[C_RESET_V];                                                     \
        const T *restrict kf = coef[C_FEEDBACK];                                                    \
        const T one = (T)1, zero = (T)0, vclip = (T)V_CLIP, phs = (T)PHI_SERIES;                    \
        const T c2 = (T)(1.0 / 2), c6 = (T)(1.0 / 6), c24 = (T)(1.0 / 24), c120 = (T)(1.0 / 120);   \
        const T c720 = (T)(1.0 / 720), c5040 = (T)(1.0 / 5040);                                     \
        T local[6 * TANGENT_CHUNK]; /* the local Jacobian of one chunk (tangent variant) */        \
        (void)local;                                                                                \
        for (int64_t k = 0; k < steps; ++k) {                                                       \
            const T *restrict ik = current + k * i_stride;                                          \
            if (mode == 0 && tan) {                                                                 \
                /* two passes per chunk (fewer live registers than one): the step and its local  \
                 * Jacobian (the identity for a held neuron), then t <- A t + b */                 \
                for (int64_t c = lo; c < hi; c += TANGENT_CHUNK) {                                  \
                    const int64_t ce = c + TANGENT_CHUNK < hi ? c + TANGENT_CHUNK : hi;             \
                    T *restrict l_vv = local, *restrict l_vp = local + TANGENT_CHUNK;               \
                    T *restrict l_vi = local + 2 * TANGENT_CHUNK;                                   \
                    T *restrict l_pv = local + 3 * TANGENT_CHUNK;                                   \
                    T *restrict l_pp = local + 4 * TANGENT_CHUNK;                                   \
                    T *restrict l_pi = local + 5 * TANGENT_CHUNK;                                   \
                    _Pragma("omp simd")                                                             \
                    for (int64_t i = c; i < ce; ++i) {                                              \
                        FELIF_NEXT_STATE(T, EXP, LOG, FABS, FMIN, FMAX)                             \
                        FELIF_LOCAL_JACOBIAN(T)                                                     \
                        const int h = held[i] != 0;                                                 \
                        const T vo = h ? vi : vn;                                                   \
                        v[i] = vo;                                                                  \
                        p[i] = h ? pi : pn;                                                         \
                        held[i] = (uint8_t)(h | (vo > thr[i]));                                     \
                        l_vv[i - c] = h ? one : a_vv;                                               \
                        l_vp[i - c] = h ? zero : a_vp;                                              \
                        l_vi[i - c] = h ? zero : a_vi;                                              \
                        l_pv[i - c] = h ? zero : a_pv;                                              \
                        l_pp[i - c] = h ? one : a_pp;                                               \
                        l_pi[i - c] = h ? zero : a_pi;                                              \
                    }                                                                               \
                    T *restrict t_0 = tan, *restrict t_1 = tan + n, *restrict t_2 = tan + 2 * n;    \
                    T *restrict t_3 = tan + 3 * n, *restrict t_4 = tan + 4 * n;                     \
                    T *restrict t_5 = tan + 5 * n;                                                  \
                    _Pragma("omp simd")                                                             \
                    for (int64_t i = c; i < ce; ++i) {                                              \
                        const T avv = l_vv[i - c], avp = l_vp[i - c], apv = l_pv[i - c];            \
                        const T app = l_pp[i - c];                                                  \
                        const T x0 = t_0[i], x1 = t_1[i], x2 = t_2[i];                              \
                        const T x3 = t_3[i], x4 = t_4[i], x5 = t_5[i];                              \
                        t_0[i] = avv * x0 + avp * x3;                                               \
                        t_1[i] = avv * x1 + avp * x4;                                               \
                        t_2[i] = avv * x2 + avp * x5 + l_vi[i - c];                                 \
                        t_3[i] = apv * x0 + app * x3;                                               \
                        t_4[i] = apv * x1 + app * x4;                                               \
                        t_5[i] = apv * x2 + app * x5 + l_pi[i - c];                                 \
                    }                                                                               \
                }                                                                                   \
            } else if (mode == 0) {                                                                 \
                _Pragma("omp simd")                                                                 \
                for (int64_t i = lo; i < hi; ++i) {                                                 \
                    FELIF_NEXT_STATE(T, EXP, LOG, FABS, FMIN, FMAX)                                 \
                    const int h = held[i] != 0;                                                     \
                    const T vo = h ? vi : vn;                                                       \
                    v[i] = vo;                                                                      \
                    p[i] = h ? pi : pn;                                                             \
                    held[i] = (uint8_t)(h | (vo > thr[i]));                                         \
                }                                                                                   \
            } else {                                                                                \
                uint8_t *restrict fk = fired + k * n;                                               \
                _Pragma("omp simd")                                                                 \
                for (int64_t i = lo; i < hi; ++i) {                                                 \
                    FELIF_NEXT_STATE(T, EXP, LOG, FABS, FMIN, FMAX)                                 \
                    const int f = vn > thr[i];                                                      \
                    fk[i] = (uint8_t)f;                                                             \
                    v[i] = f ? rv[i] : vn;                                                          \
                    p[i] = f ? -ps[i] : pn;                                                         \
                }                                                                                   \
                if (v_rec && (k + 1) % record_every == 0) {                                         \
                    const int64_t row = (k + 1) / record_every;                                     \
                    for (int64_t i = lo; i < hi; ++i) {                                             \
                        v_rec[row * n + i] = v[i];                                                  \
                        p_rec[row * n + i] = p[i];                                                  \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
                                                                                                    \
    /* The block's last (hi - lo) % TAIL_LANES neurons, run as one full SIMD vector on padded     \
     * copies (pad lanes repeat the last neuron and are discarded): a remainder the compiler     \
     * would run lane by lane costs ~40 ns per neuron-step, a full vector ~2.5 ns per lane. The  \
     * neurons are independent, so the result is the block's own, lane for lane. */              \
    static void tail_##SUFFIX(int64_t lo, int64_t hi, int64_t n, int64_t steps, T dt, T *v, T *p,  \
                              const T *current, int64_t i_stride, const T *const *coef, int mode,  \
                              uint8_t *held, uint8_t *fired, T *v_rec, T *p_rec,                  \
                              int64_t record_every, T *tan) {                                      \
        enum { L = TAIL_LANES };                                                                    \
        const int64_t r = hi - lo;                                                                  \
        const int64_t rows = steps / record_every; /* recorded rows after row 0 */                 \
        T coef_t[C_COUNT][L], v_t[L], p_t[L], tan_t[TANGENTS * L];                                  \
        uint8_t held_t[L];                                                                          \
        const T *coef_p[C_COUNT];                                                                   \
        T *cur_t = malloc(sizeof(T) * L * (i_stride ? (size_t)steps : 1));                          \
        uint8_t *fired_t = fired ? malloc((size_t)L * (size_t)steps) : NULL;                        \
        T *rec_t = v_rec ? malloc(sizeof(T) * 2 * L * (size_t)(rows + 1)) : NULL;                   \
        if (!cur_t || (fired && !fired_t) || (v_rec && !rec_t)) {                                   \
            free(cur_t), free(fired_t), free(rec_t);                                                \
            block_##SUFFIX(lo, hi, n, steps, dt, v, p, current, i_stride, coef, mode, held, fired, \
                           v_rec, p_rec, record_every, tan); /* unpadded, slower, same result */   \
            return;                                                                                 \
        }                                                                                           \
        for (int64_t j = 0; j < L; ++j) {                                                           \
            const int64_t i = lo + (j < r ? j : r - 1);                                             \
            for (int c = 0; c < C_COUNT; ++c) coef_t[c][j] = coef[c][i];                            \
            v_t[j] = v[i], p_t[j] = p[i];                                                           \
            held_t[j] = held ? held[i] : 0;                                                         \
            for (int64_t k = 0; k < (i_stride ? steps : 1); ++k)                                    \
                cur_t[k * L + j] = current[k * i_stride + i];                                       \
            if (tan)                                                                                \
                for (int t = 0; t < TANGENTS; ++t) tan_t[t * L + j] = tan[t * n + i];               \
        }                                                                                           \
        for (int c = 0; c < C_COUNT; ++c) coef_p[c] = coef_t[c];                                    \
        block_##SUFFIX(0, L, L, steps, dt, v_t, p_t, cur_t, i_stride ? L : 0, coef_p, mode,        \
                       held ? held_t : NULL, fired_t, rec_t, rec_t ? rec_t + L * (rows + 1) : NULL, \
                       record_every, tan ? tan_t : NULL);                                           \
        for (int64_t j = 0; j < r; ++j) {                                                           \
            const int64_t i = lo + j;                                                               \
            v[i] = v_t[j], p[i] = p_t[j];                                                           \
            if (held) held[i] = held_t[j];                                                          \
            if (tan)                                                                                \
                for (int t = 0; t < TANGENTS; ++t) tan[t * n + i] = tan_t[t * L + j];               \
            for (int64_t k = 0; fired && k < steps; ++k) fired[k * n + i] = fired_t[k * L + j];     \
            for (int64_t row = 1; v_rec && row <= rows; ++row) {                                    \
                v_rec[row * n + i] = rec_t[row * L + j];                                            \
                p_rec[row * n + i] = rec_t[(rows + 1 + row) * L + j];                               \
            }                                                                                       \
        }                                                                                           \
        free(cur_t), free(fired_t), free(rec_t);                                                    \
    }                                                                                               \
                                                                                                    \
    int bruno_felif_run_##SUFFIX(int64_t n, int64_t steps, double dt, T *v, T *p,                  \
                                 const T *current, int64_t i_stride, const T *const *coef,         \
                                 int mode, uint8_t *held, uint8_t *fired, T *v_rec, T *p_rec,      \
                                 int64_t record_every, T *tangents, int64_t block, int nthreads) {  \
        if (n <= 0 || steps < 0) return 0;                                                          \
        if (block <= 0) block = n;                                                                  \
        if (record_every <= 0) record_every = 1;                                                    \
        const int64_t nblocks = (n + block - 1) / block;                                            \
        int nt = nthreads > 0 ? nthreads : 1;                                                       \
        if (nt > nblocks) nt = (int)nblocks;                                                        \
        (void)nt;                                                                                   \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nt) if(nt > 1)")                   \
        for (int64_t b = 0; b < nblocks; ++b) {                                                     \
            const int64_t lo = b * block;                                                           \
            const int64_t hi = lo + block < n ? lo + block : n;                                     \
            const int64_t mid = hi - (hi - lo) % TAIL_LANES;                                        \
            if (mid > lo)                                                                           \
                block_##SUFFIX(lo, mid, n, steps, (T)dt, v, p, current, i_stride, coef, mode,      \
                               held, fired, v_rec, p_rec, record_every, tangents);                  \
            if (hi > mid)                                                                           \
                tail_##SUFFIX(mid, hi, n, steps, (T)dt, v, p, current, i_stride, coef, mode, held, \
                              fired, v_rec, p_rec, record_every, tangents);                         \
        }                                                                                           \
        return 0;                                                                                   \
    }

DEFINE_KERNEL(float, f32, BRUNO_EXPF, BRUNO_LOGF, fabsf, fminf, fmaxf)
DEFINE_KERNEL(double, f64, exp, log, fabs, fmin, fmax)

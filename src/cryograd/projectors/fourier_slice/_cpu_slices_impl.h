/* The loops of _cpu_slices.c for one real type: included once with T = float, SUFFIX = f32 and
 * once with T = double, SUFFIX = f64. */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUFFIX)

/* What every loop shares: the slice sampling of a chunk. */
typedef struct {
  int64_t n, ns, h, sz, sy; /* particles (poses), samples per slice, P/2, extended strides */
  T scale;                  /* P / D */
  const T *rot, *kx, *ky;   /* (n, 3, 3) RELION A; (ns,) integer frequencies */
} FN(geo_t);

typedef struct {
  int64_t base; /* flat index of the lower corner */
  T w[8];       /* trilinear weights of the corners */
  T sgn;        /* -1: mirrored through the origin (Friedel) */
} FN(sample_t);

/* 3D position of sample s of particle i, mirrored into qx >= 0 and clamped to the Nyquist
 * sphere's bounding box, as slice_geometry computes it (a NaN is clamped to a bound: no access
 * leaves the grid). */
static inline void FN(position)(const FN(geo_t) *g, int64_t i, int64_t s, T *q, T *sgn) {
  const T *A = g->rot + 9 * i;
  const T kx = g->kx[s], ky = g->ky[s], h = (T)g->h;
  T qx = g->scale * (kx * A[0] + ky * A[3]);
  T qy = g->scale * (kx * A[1] + ky * A[4]);
  T qz = g->scale * (kx * A[2] + ky * A[5]);
  *sgn = 1;
  if (qx < 0) { qx = -qx; qy = -qy; qz = -qz; *sgn = -1; }
  /* clamp as fmin(fmax(v, lo), hi), a NaN to lo, by comparisons (no library calls) */
  qx = qx > 0 ? qx : (T)0;
  qy = qy > -h ? qy : -h;
  qz = qz > -h ? qz : -h;
  q[0] = qx < h ? qx : h;
  q[1] = qy < h ? qy : h;
  q[2] = qz < h ? qz : h;
}

static inline void FN(geometry)(const FN(geo_t) *g, int64_t i, int64_t s, FN(sample_t) *out) {
  T q[3];
  FN(position)(g, i, s, q, &out->sgn);
  const T x0 = floor(q[0]), y0 = floor(q[1]), z0 = floor(q[2]);
  const T ax = q[0] - x0, ay = q[1] - y0, az = q[2] - z0;
  out->base = ((int64_t)z0 + g->h) * g->sz + ((int64_t)y0 + g->h) * g->sy + (int64_t)x0;
  out->w[0] = (1 - az) * (1 - ay) * (1 - ax);
  out->w[1] = (1 - az) * (1 - ay) * ax;
  out->w[2] = (1 - az) * ay * (1 - ax);
  out->w[3] = (1 - az) * ay * ax;
  out->w[4] = az * (1 - ay) * (1 - ax);
  out->w[5] = az * (1 - ay) * ax;
  out->w[6] = az * ay * (1 - ax);
  out->w[7] = az * ay * ax;
}

/* The extended plane index z0 + P/2 of a sample's lower corner. */
static inline uint16_t FN(lower_plane)(const FN(geo_t) *g, int64_t i, int64_t s) {
  T q[3], sgn;
  FN(position)(g, i, s, q, &sgn);
  return (uint16_t)((int64_t)floor(q[2]) + g->h);
}

static inline void FN(corner_offsets)(const FN(geo_t) *g, int64_t *off) {
  const int64_t sz = g->sz, sy = g->sy;
  off[0] = 0; off[1] = 1; off[2] = sy; off[3] = sy + 1;
  off[4] = sz; off[5] = sz + 1; off[6] = sz + sy; off[7] = sz + sy + 1;
}

typedef void (*FN(body_t))(const FN(geo_t) *g, const void *ctx, int64_t i, int64_t s);

/* Run `body` on every sample of the chunk, the grid split into slabs over the threads (see the
 * file's comment). One thread takes the slabs too: a slab's samples add into a few MB of the grid
 * instead of sweeping all of it per particle (box 128, pad 2: 0.43 s instead of 0.63 s of CPU
 * per 512 particles). Where the plan cannot be allocated: in particle order. */
static void FN(scatter_all)(const FN(geo_t) *g, FN(body_t) body, const void *ctx, int nthreads) {
  const int64_t planes = 2 * g->h + 1, count = g->n * g->ns;
  int nt = thread_count(nthreads);
  if (nt > g->n) nt = (int)g->n;
  if (nt > MAX_THREADS) nt = MAX_THREADS;
  int nslab = 2 * nt * SLABS_PER_THREAD;
  if (nslab > planes) nslab = (int)planes;
  /* the particles in chunks of consecutive particles, several per thread, taken dynamically:
   * a thread that is descheduled (or shares its core) holds the others back by one chunk */
  int nchunk = nt * CHUNKS_PER_THREAD;
  if (nchunk > g->n) nchunk = (int)g->n;
  slab_plan_t plan = {NULL, NULL, NULL, NULL, NULL, NULL};
  if (nslab >= 2 && count <= (int64_t)UINT32_MAX)
    plan = slab_plan_alloc(count, planes, nchunk, nslab);
  if (plan.zb == NULL) {
    for (int64_t i = 0; i < g->n; ++i)
      for (int64_t s = 0; s < g->ns; ++s) body(g, ctx, i, s);
    return;
  }
  /* 1. lower planes and per-chunk plane histograms, chunk c on particles [i0, i1) */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int c = 0; c < nchunk; ++c) {
    int64_t *hist = plan.hist + (int64_t)c * planes;
    for (int64_t i = g->n * c / nchunk; i < g->n * (c + 1) / nchunk; ++i)
      for (int64_t s = 0; s < g->ns; ++s) {
        const uint16_t z = FN(lower_plane)(g, i, s);
        plan.zb[i * g->ns + s] = z;
        hist[z] += 1;
      }
  }
  /* 2. slab bounds of about equal counts, and where each chunk's samples of each slab go */
  slab_plan_offsets(&plan, planes, nchunk, nslab);
  /* 3. the samples' indices, slab by slab, in particle order within a slab */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int c = 0; c < nchunk; ++c) {
    int64_t *pos = plan.offsets + (int64_t)c * nslab;
    for (int64_t i = g->n * c / nchunk; i < g->n * (c + 1) / nchunk; ++i)
      for (int64_t s = 0; s < g->ns; ++s) {
        const int64_t k = i * g->ns + s;
        plan.order[pos[plan.slab_of[plan.zb[k]]]++] = (uint32_t)k;
      }
  }
  /* 4. even slabs, then odd slabs (two slabs of one parity share no plane); dynamic: a thread
   * that was descheduled holds the others back by one thin slab at most */
  const uint32_t ns = (uint32_t)g->ns;
  for (int parity = 0; parity < 2; ++parity) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int k = parity; k < nslab; k += 2)
      for (int64_t m = plan.starts[k]; m < plan.starts[k + 1]; ++m) {
        const uint32_t idx = plan.order[m];
        body(g, ctx, (int64_t)(idx / ns), (int64_t)(idx % ns));
      }
  }
  slab_plan_free(&plan);
}

/* --- plain insertion / extraction: values (C channels) <-> grid ---------------------------- */

typedef struct {
  const int64_t *flat;
  const T *slices;
  T *grid;
  int64_t hw, channels, conj_channel;
} FN(plain_t);

static void FN(plain_insert_body)(const FN(geo_t) *g, const void *ctx, int64_t i, int64_t s) {
  const FN(plain_t) *c = (const FN(plain_t) *)ctx;
  FN(sample_t) p;
  FN(geometry)(g, i, s, &p);
  int64_t off[8];
  FN(corner_offsets)(g, off);
  T v[4];
  const T *src = c->slices + (i * c->hw + c->flat[s]) * c->channels;
  for (int64_t ch = 0; ch < c->channels; ++ch) v[ch] = src[ch];
  if (c->conj_channel >= 0) v[c->conj_channel] *= p.sgn;
  for (int k = 0; k < 8; ++k) {
    T *cell = c->grid + (p.base + off[k]) * c->channels;
    for (int64_t ch = 0; ch < c->channels; ++ch) cell[ch] += p.w[k] * v[ch];
  }
}

/* The integer sizes, packed by the caller as dims[8] = {n, ns, hw, channels, conj_channel, h, sz,
 * sy}: particles, samples per slice, half-grid size D (D/2+1), channels per cell (2 complex, 1
 * real), the channel negated for mirrored samples (-1: none), P/2, extended strides. */
void FN(cryograd_insert)(const int64_t *dims, const T *rot, const T *kx, const T *ky,
                         const int64_t *flat, const T *slices, T scale, T *grid, int nthreads) {
  const FN(geo_t) g = {dims[0], dims[1], dims[5], dims[6], dims[7], scale, rot, kx, ky};
  const FN(plain_t) c = {flat, slices, grid, dims[2], dims[3], dims[4]};
  FN(scatter_all)(&g, FN(plain_insert_body), &c, nthreads);
}

void FN(cryograd_extract)(const int64_t *dims, const T *rot, const T *kx, const T *ky,
                          const int64_t *flat, T *slices, T scale, const T *grid, int nthreads) {
  const FN(geo_t) g = {dims[0], dims[1], dims[5], dims[6], dims[7], scale, rot, kx, ky};
  const int64_t hw = dims[2], channels = dims[3], conj_channel = dims[4];
  int64_t off[8];
  FN(corner_offsets)(&g, off);
  const int nt = thread_count(nthreads);
  (void)nt; /* unused without OpenMP */
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < g.n; ++i) {
    for (int64_t s = 0; s < g.ns; ++s) {
      FN(sample_t) p;
      FN(geometry)(&g, i, s, &p);
      T v[4] = {0, 0, 0, 0};
      for (int k = 0; k < 8; ++k) {
        const T *cell = grid + (p.base + off[k]) * channels;
        for (int64_t ch = 0; ch < channels; ++ch) v[ch] += p.w[k] * cell[ch];
      }
      if (conj_channel >= 0) v[conj_channel] *= p.sgn;
      T *dst = slices + (i * hw + flat[s]) * channels;
      for (int64_t ch = 0; ch < channels; ++ch) dst[ch] = v[ch];
    }
  }
}

/* --- weighted insertion: spectra, CTF, shift and sample weights in one pass ----------------- */

typedef struct {
  const int64_t *flat;
  const T *spectra;      /* (n / group, hw) complex, interleaved */
  const double *params;  /* (n / group, NPAR) */
  const double *tables;  /* (optics groups, ns, NTAB) or NULL */
  const T *sw;           /* (ns,) sample weights */
  T *num, *wts;          /* complex numerator grid; real weight grid or NULL */
  int64_t hw, group, box, packed; /* packed: num holds (re, im, weight) per cell, wts unused */
  const double *ramp;    /* (n / group, RAMP_LEN(box)) complex shift ramps, or NULL */
} FN(weighted_t);

static void FN(weighted_body)(const FN(geo_t) *g, const void *ctx, int64_t i, int64_t s) {
  const FN(weighted_t) *c = (const FN(weighted_t) *)ctx;
  const int64_t j = i / c->group;
  const double *pp = c->params + NPAR * j;
  const int flags = (int)pp[P_FLAGS];
  const double kx = (double)g->kx[s], ky = (double)g->ky[s];
  const T *src = c->spectra + 2 * (j * c->hw + c->flat[s]);
  double re = (double)src[0], im = (double)src[1];
  if (pp[P_TX] != 0 || pp[P_TY] != 0) { /* ramp(+origin) = exp(-2 pi i k.t / D) */
    double cr, si;
    if (c->ramp != NULL) { /* the product of the particle's x and y ramps */
      const double *rx = c->ramp + 2 * (j * RAMP_LEN(c->box) + (int64_t)kx);
      const double *ry = c->ramp + 2 * (j * RAMP_LEN(c->box) + RAMP_Y(c->box) + c->box / 2 +
                                     (int64_t)ky);
      cr = rx[0] * ry[0] - rx[1] * ry[1];
      si = rx[0] * ry[1] + rx[1] * ry[0];
    } else {
      const double ph = (-2.0 * M_PI / (double)c->box) * (kx * pp[P_TX] + ky * pp[P_TY]);
      cr = cos(ph);
      si = sin(ph);
    }
    const double r = re;
    re = r * cr - im * si;
    im = r * si + im * cr;
  }
  double offset = 0.0, keep = 1.0;
  if (c->tables != NULL && pp[P_GROUP] >= 0) { /* observation model: demodulate exp(-i phi) */
    const double *t = c->tables + NTAB * ((int64_t)pp[P_GROUP] * g->ns + s);
    const double r = re;
    re = r * t[0] + im * t[1];
    im = im * t[0] - r * t[1];
    offset = t[2];
    keep = t[3];
  }
  double ctf = 1.0;
  if (flags & 1) { /* RELION's CTF, as cryograd.ctf.ctf_from_frequencies */
    const double mx = pp[P_M00] * kx + pp[P_M01] * ky, my = pp[P_M10] * kx + pp[P_M11] * ky;
    const double sx = mx * pp[P_INV], sy = my * pp[P_INV], s2 = sx * sx + sy * sy;
    double c2t = 1.0, s2t = 0.0; /* cos, sin of 2 atan2(sy, sx); atan2(0, 0) = 0 */
    if (s2 > 0) { c2t = (sx * sx - sy * sy) / s2; s2t = 2.0 * sx * sy / s2; }
    const double df = pp[P_DF_MEAN] + pp[P_DF_HALF] * (c2t * pp[P_COS2A] + s2t * pp[P_SIN2A]);
    const double gamma = pp[P_C1] * df * s2 + pp[P_C2] * s2 * s2 - pp[P_C0] + offset;
    ctf = ((flags & 4) && fabs(gamma) < M_PI / 2) ? 1.0 : -sin(gamma);
    if (pp[P_BQ] != 0) ctf *= exp(pp[P_BQ] * s2); /* exp(0) = 1: no B factor, no exp */
    if (flags & 8) ctf = fabs(ctf);
    else if (flags & 16) ctf = ctf < 0 ? -1.0 : 1.0;
    ctf *= pp[P_SCALE];
  }
  const double f = (flags & 2) ? 1.0 : ctf, sw = (double)c->sw[s] * keep;
  const T vre = (T)(re * f * sw), vim = (T)(im * f * sw);
  FN(sample_t) p;
  FN(geometry)(g, i, s, &p);
  int64_t off[8];
  FN(corner_offsets)(g, off);
  const T vi = vim * p.sgn;
  if (c->packed) {
    const T wv = (T)(ctf * ctf * sw);
    for (int k = 0; k < 8; ++k) {
      T *cell = c->num + 3 * (p.base + off[k]);
      cell[0] += p.w[k] * vre;
      cell[1] += p.w[k] * vi;
      cell[2] += p.w[k] * wv;
    }
    return;
  }
  for (int k = 0; k < 8; ++k) {
    T *cell = c->num + 2 * (p.base + off[k]);
    cell[0] += p.w[k] * vre;
    cell[1] += p.w[k] * vi;
  }
  if (c->wts != NULL) {
    const T wv = (T)(ctf * ctf * sw);
    for (int k = 0; k < 8; ++k) c->wts[p.base + off[k]] += p.w[k] * wv;
  }
}

/* dims[9] = {n, ns, hw, group, h, sz, sy, box, packed}: poses (particles x group symmetry copies,
 * pose i uses spectrum and parameters i / group), samples per slice, D (D/2+1), copies per
 * particle, P/2, extended strides, D, and 1 when `num` is a packed grid of (re, im, weight)
 * cells (which keeps a sample's values and weights in the same cache lines). */
void FN(cryograd_insert_weighted)(const int64_t *dims, const T *rot, const T *kx, const T *ky,
                                  const int64_t *flat, const T *spectra, const double *params,
                                  const double *tables, const T *sw, T scale, T *num, T *wts,
                                  int nthreads) {
  const FN(geo_t) g = {dims[0], dims[1], dims[4], dims[5], dims[6], scale, rot, kx, ky};
  const int64_t box = dims[7], particles = g.n / (dims[3] > 0 ? dims[3] : 1);
  double *ramp = (double *)malloc((size_t)(particles * RAMP_LEN(box)) * 2 * sizeof(double));
  if (ramp != NULL) shift_ramps(params, particles, box, ramp, thread_count(nthreads));
  const FN(weighted_t) c = {flat, spectra, params,  tables,  sw,      num,
                            wts,  dims[2], dims[3], box, dims[8], ramp};
  FN(scatter_all)(&g, FN(weighted_body), &c, nthreads);
  free(ramp);
}

/* --- fold of a packed accumulator: (re, im, weight) extended cells -> numerator and weights -- */

/* Extended row r (z or y, 0 .. P + 1) holds index (r - P/2) mod P: of output index j, `main` is
 * the row of 0 .. P - 1 and `extra` the row P or P + 1 that also maps to j (-1: none). */
static inline void FN(fold_rows)(int64_t padded, int64_t j, int64_t *main_row, int64_t *extra) {
  const int64_t h = padded / 2;
  *main_row = (j + h) % padded;
  *extra = -1;
  for (int64_t r = padded; r < padded + 2; ++r)
    if ((r - h) % padded == j) *extra = r;
}

/* out[x] = Σ of the packed cells of rows (z, y) over x: the numerator's (re, im) into num (2 per
 * x), the weight into wts; the four sources added in the order of geometry._fold_into (main z
 * and y, extra z, extra z and y, extra y), so that the sums equal its to the last bit. */
static void FN(fold_row)(const T *packed, int64_t padded, int64_t jz, int64_t jy, T *num,
                         T *wts) {
  const int64_t half = padded / 2 + 1, sy = 3 * (half + 1), sz = sy * (padded + 2);
  int64_t zm, ze, ym, ye;
  FN(fold_rows)(padded, jz, &zm, &ze);
  FN(fold_rows)(padded, jy, &ym, &ye);
  const T *src[4] = {packed + zm * sz + ym * sy, ze < 0 ? NULL : packed + ze * sz + ym * sy,
                     ze < 0 || ye < 0 ? NULL : packed + ze * sz + ye * sy,
                     ye < 0 ? NULL : packed + zm * sz + ye * sy};
  for (int64_t x = 0; x < half; ++x) {
    T re = src[0][3 * x], im = src[0][3 * x + 1], w = src[0][3 * x + 2];
    for (int k = 1; k < 4; ++k)
      if (src[k] != NULL) {
        re += src[k][3 * x];
        im += src[k][3 * x + 1];
        w += src[k][3 * x + 2];
      }
    num[2 * x] = re;
    num[2 * x + 1] = im;
    wts[x] = w;
  }
}

/* Fold a packed extended accumulator ((P + 2, P + 2, P/2 + 2, 3) reals, ExtendedSpectrum.
 * zeros_packed) into the (P, P, P/2 + 1) complex numerator `num` (interleaved) and real weights
 * `wts`; threads split the z planes (each writes, and first touches, its own planes). */
void FN(cryograd_fold_packed)(int64_t padded, const T *packed, T *num, T *wts, int nthreads) {
  const int64_t half = padded / 2 + 1;
  const int nt = thread_count(nthreads);
  (void)nt; /* unused without OpenMP */
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t jz = 0; jz < padded; ++jz)
    for (int64_t jy = 0; jy < padded; ++jy) {
      const int64_t row = jz * padded + jy;
      FN(fold_row)(packed, padded, jz, jy, num + 2 * half * row, wts + half * row);
    }
}

#undef FN
#undef CAT
#undef CAT_

/* Compiled CPU loops for the Fourier-slice pair: fused trilinear scatter (insertion) and gather
 * (extraction) of central slices in cryograd's extended half-spectrum layout, on several threads.
 *
 * They are the CPU counterpart of the Triton kernels: the geometry of
 * cryograd.projectors.fourier_slice.slice_geometry (the reference) is computed per sample inside the
 * loop, and the eight corners and all channels of a sample are visited together, which keeps the
 * memory traffic local and makes no (batch x samples) temporaries. The weighted insertion
 * (`cryograd_insert_weighted_*`) also computes RELION's CTF, the shift ramp and the sample weights
 * from each particle's parameters in the loop and adds the values and the CTF^2 weights in one
 * pass. Tests compare every loop with the torch reference.
 *
 * Layout: `grid` holds C interleaved values per cell (C = 2 for complex, 1 for real weights); the
 * eight corners of a sample sit at base + {0, 1, sy, sy + 1, sz, sz + 1, sz + sy, sz + sy + 1}.
 * A sample with sign < 0 was mirrored through the origin (Friedel): channel `conj_channel`
 * (the imaginary part) changes sign on the way in and on the way out.
 *
 * Threads (OpenMP; one thread where the compiler has none): extraction splits the particles.
 * Insertion splits the grid, not the particles, so that no two threads add into one cell and no
 * atomics or per-thread grids are needed: the samples' lower z planes are counted, the planes
 * are cut into 16T slabs of about equal sample counts, the samples are sorted by slab (a
 * counting sort on the threads, particle order kept within a slab), and the even slabs then the
 * odd slabs are filled, a slab at a time per thread (a sample writes planes z0 and z0 + 1, so two
 * slabs of one parity never touch the same plane). Each cell receives its samples in particle
 * order within a slab. Thin slabs also keep each thread's writes in a few MB of the grid.
 *
 * Built as an optional extension by setup.py and loaded with ctypes; when it is absent cryograd
 * uses the torch path, which the tests compare it against.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Per-particle parameters of the weighted insertion, NPAR doubles each (filled by _cpu.py). */
enum {
  P_TX, P_TY,           /* origin in pixels (the image is shifted by +origin) */
  P_DF_MEAN, P_DF_HALF, /* (dfU + dfV) / 2, (dfU - dfV) / 2 in Angstrom */
  P_COS2A, P_SIN2A,     /* cos, sin of twice the defocus angle */
  P_C1, P_C2, P_C0,     /* gamma = C1 * df * s^2 + C2 * s^4 - C0 */
  P_BQ, P_SCALE,        /* envelope exp(BQ * s^2) * scale */
  P_INV,                /* 1 / (D * pixel size): spatial frequency of one grid step, 1/A */
  P_FLAGS,              /* bit 0: has a CTF, bit 1: the image is CTF-premultiplied; bits 2-4:
                           RELION's CTF switches (intact first peak, |CTF|, sign(CTF)) */
  P_M00, P_M01, P_M10, P_M11, /* magnification: the CTF is taken at M k */
  P_GROUP,              /* row of the particle's optics group in the tables (-1: none) */
  NPAR = 24
};

/* Per optics group and slice sample, NTAB doubles: cos phi, sin phi of the odd aberration phase
 * (the sample is multiplied by exp(-i phi)), the even-Zernike offset added to gamma, and a keep
 * factor (0 beyond the reference Nyquist radius). */
enum { NTAB = 4 };

/* Threads of the insertion's slab split at most, and slabs per thread and parity (more, thinner
 * slabs balance the threads' work when the slabs' costs differ or a thread is descheduled). */
enum { MAX_THREADS = 256, SLABS_PER_THREAD = 8 };

/* Chunks of consecutive particles per thread in the counting and sorting passes of the slab
 * split (taken dynamically; each has its own plane histogram). */
enum { CHUNKS_PER_THREAD = 8 };

/* The insertion's split of one chunk: `zb` (count) the samples' lower planes; `hist` (nc, planes)
 * each particle chunk's samples per plane; `slab_of` (planes) the slab of each plane; `starts`
 * (nslab + 1) where each slab's samples begin in `order` (count, sample indices i * ns + s, slab
 * by slab, in particle order within a slab); `offsets` (nc, nslab) where chunk t's samples of
 * slab k go. One allocation. */
typedef struct {
  uint16_t *zb;
  int64_t *hist, *starts, *offsets;
  int32_t *slab_of;
  uint32_t *order;
} slab_plan_t;

static slab_plan_t slab_plan_alloc(int64_t count, int64_t planes, int nc, int nslab) {
  slab_plan_t p = {NULL, NULL, NULL, NULL, NULL, NULL};
  const size_t n64 = (size_t)nc * (size_t)planes + (size_t)nslab + 1 + (size_t)nc * (size_t)nslab;
  const size_t bytes = n64 * 8 + (size_t)planes * 4 + (size_t)count * 4 + (size_t)count * 2;
  char *mem = (char *)malloc(bytes);
  if (mem == NULL) return p;
  p.hist = (int64_t *)mem;
  memset(p.hist, 0, (size_t)nc * (size_t)planes * 8);
  p.starts = p.hist + (size_t)nc * (size_t)planes;
  p.offsets = p.starts + nslab + 1;
  p.slab_of = (int32_t *)(p.offsets + (size_t)nc * (size_t)nslab);
  p.order = (uint32_t *)(p.slab_of + planes);
  p.zb = (uint16_t *)(p.order + count);
  return p;
}

static void slab_plan_free(slab_plan_t *p) {
  free(p->hist);
  p->hist = NULL;
  p->zb = NULL;
}

/* From the chunks' histograms: slab bounds (planes [b[k], b[k+1]), nslab slabs of about equal
 * sample counts, strictly increasing), each plane's slab, the slabs' starts and each chunk's
 * offsets (chunks in particle order, so a slab's samples stay in particle order). */
static void slab_plan_offsets(slab_plan_t *p, int64_t planes, int nc, int nslab) {
  int64_t bounds[2 * MAX_THREADS * SLABS_PER_THREAD + 1];
  int64_t count = 0;
  for (int64_t z = 0; z < planes; ++z)
    for (int t = 0; t < nc; ++t) count += p->hist[(int64_t)t * planes + z];
  bounds[0] = 0;
  int64_t acc = 0, z = 0;
  for (int k = 1; k < nslab; ++k) {
    const int64_t target = count * k / nslab;
    while (z < planes) {
      int64_t hz = 0;
      for (int t = 0; t < nc; ++t) hz += p->hist[(int64_t)t * planes + z];
      if (acc + hz > target) break;
      acc += hz;
      ++z;
    }
    int64_t b = z;
    if (b < bounds[k - 1] + 1) b = bounds[k - 1] + 1;
    if (b > planes - (nslab - k)) b = planes - (nslab - k);
    bounds[k] = b;
  }
  bounds[nslab] = planes;
  int64_t start = 0;
  for (int k = 0; k < nslab; ++k) {
    p->starts[k] = start;
    for (int t = 0; t < nc; ++t) {
      int64_t n = 0;
      for (int64_t zz = bounds[k]; zz < bounds[k + 1]; ++zz) {
        n += p->hist[(int64_t)t * planes + zz];
        p->slab_of[zz] = k;
      }
      p->offsets[(int64_t)t * nslab + k] = start;
      start += n;
    }
  }
  p->starts[nslab] = start;
}

/* Per-particle shift ramps of the weighted insertion: exp(-2 pi i k.t / D) = x ramp (kx = 0 ..
 * D/2) times y ramp (ky = -(D/2) .. D/2), RAMP_LEN doubles-complex per particle, the y ramp at
 * RAMP_Y; D + 2 sines and cosines per particle instead of one per slice sample. */
#define RAMP_Y(box) ((box) / 2 + 1)
#define RAMP_LEN(box) (RAMP_Y(box) + 2 * ((box) / 2) + 1)

static void shift_ramps(const double *params, int64_t n, int64_t box, double *ramp, int nt) {
  (void)nt; /* unused without OpenMP */
  const double step = -2.0 * M_PI / (double)box;
  const int64_t h = box / 2, len = RAMP_LEN(box);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t j = 0; j < n; ++j) {
    const double tx = params[NPAR * j + P_TX], ty = params[NPAR * j + P_TY];
    double *r = ramp + 2 * j * len;
    for (int64_t k = 0; k <= h; ++k) {
      r[2 * k] = cos(step * (double)k * tx);
      r[2 * k + 1] = sin(step * (double)k * tx);
    }
    double *ry = r + 2 * RAMP_Y(box) + 2 * h; /* ry[2 ky] for ky = -h .. h */
    for (int64_t k = -h; k <= h; ++k) {
      ry[2 * k] = cos(step * (double)k * ty);
      ry[2 * k + 1] = sin(step * (double)k * ty);
    }
  }
}

/* Threads to run on: the request with OpenMP, one without it. */
static int thread_count(int requested) {
#ifdef _OPENMP
  return requested < 1 ? 1 : requested;
#else
  (void)requested;
  return 1;
#endif
}

#define T float
#define SUFFIX f32
#include "_cpu_slices_impl.h"
#undef T
#undef SUFFIX

#define T double
#define SUFFIX f64
#include "_cpu_slices_impl.h"
#undef T
#undef SUFFIX

/* Whether the loops were built with OpenMP (1) or run on one thread (0). */
int cryograd_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

/* A Python module with no functions, so that setuptools can build and import it; cryograd calls
 * the loops above through ctypes on this module's file. */
static struct PyModuleDef cpu_slices_module = {PyModuleDef_HEAD_INIT, "_cpu_slices",
                                               "Compiled CPU loops (used through ctypes).", -1,
                                               NULL};

PyMODINIT_FUNC PyInit__cpu_slices(void) { return PyModule_Create(&cpu_slices_module); }

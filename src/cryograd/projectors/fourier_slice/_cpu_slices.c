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
 * are cut into 2T slabs of about equal sample counts, and the even slabs then the odd slabs are
 * filled, one thread per slab (a sample writes planes z0 and z0 + 1, so two slabs of one parity
 * never touch the same plane). Each cell receives its samples in particle order within a slab.
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

/* Balanced slab bounds: planes [b[k], b[k+1]) of the samples' lower z planes `zb` (count
 * samples, values < planes), nslab slabs of about equal counts, strictly increasing. */
static void slab_bounds(const uint16_t *zb, int64_t count, int64_t planes, int nslab,
                        int64_t *bounds) {
  int64_t *hist = (int64_t *)calloc((size_t)planes + 1, sizeof(int64_t));
  if (hist == NULL) { /* equal widths */
    for (int k = 0; k <= nslab; ++k) bounds[k] = planes * k / nslab;
    return;
  }
  for (int64_t j = 0; j < count; ++j) hist[zb[j]] += 1;
  bounds[0] = 0;
  int64_t acc = 0, z = 0;
  for (int k = 1; k < nslab; ++k) {
    const int64_t target = count * k / nslab;
    while (z < planes && acc + hist[z] <= target) acc += hist[z++];
    int64_t b = z;
    if (b < bounds[k - 1] + 1) b = bounds[k - 1] + 1;
    if (b > planes - (nslab - k)) b = planes - (nslab - k);
    bounds[k] = b;
  }
  bounds[nslab] = planes;
  free(hist);
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

/* Compiled CPU loops for the Fourier-slice pair: fused trilinear scatter (insertion) and gather
 * (extraction) of central slices in cryograd's extended half-spectrum layout.
 *
 * They are the CPU counterpart of the Triton kernels: the geometry of
 * cryograd.projectors.fourier_slice.slice_geometry (the reference) is computed per sample inside the
 * loop, and the eight corners and all channels of a sample are visited together, which keeps the
 * memory traffic local and makes no (batch x samples) temporaries. Tests compare them with the torch
 * reference.
 *
 * Layout: `grid` holds C interleaved values per cell (C = 2 for complex, 1 for real weights); the
 * eight corners of a sample sit at base + {0, 1, sy, sy + 1, sz, sz + 1, sz + sy, sz + sy + 1}.
 * A sample with sign < 0 was mirrored through the origin (Friedel): channel `conj_channel`
 * (the imaginary part) changes sign on the way in and on the way out.
 *
 * Built as an optional extension by setup.py and loaded with ctypes; when it is absent cryograd
 * uses the torch path, which the tests compare it against.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* Geometry of slice sample s of particle i, exactly as slice_geometry computes it. */
#define SAMPLE_GEOMETRY(T)                                                                        \
  const T *A = rot + 9 * i;                                                                       \
  T qx = scale * (kx[s] * A[0] + ky[s] * A[3]);                                                   \
  T qy = scale * (kx[s] * A[1] + ky[s] * A[4]);                                                   \
  T qz = scale * (kx[s] * A[2] + ky[s] * A[5]);                                                   \
  T sgn = 1;                                                                                      \
  if (qx < 0) { qx = -qx; qy = -qy; qz = -qz; sgn = -1; }                                         \
  /* Clamp to the Nyquist sphere's bounding box, as slice_geometry does (rounding can put a      \
   * sample a hair outside it); fmin/fmax also map a NaN to a bound: no access leaves the grid */ \
  qx = fmin(fmax(qx, (T)0), (T)h);                                                                \
  qy = fmin(fmax(qy, (T)-h), (T)h);                                                               \
  qz = fmin(fmax(qz, (T)-h), (T)h);                                                               \
  const T x0 = floor(qx), y0 = floor(qy), z0 = floor(qz);                                         \
  const T ax = qx - x0, ay = qy - y0, az = qz - z0;                                               \
  const int64_t b = ((int64_t)z0 + h) * sz + ((int64_t)y0 + h) * sy + (int64_t)x0;               \
  const T w[8] = {(1 - az) * (1 - ay) * (1 - ax), (1 - az) * (1 - ay) * ax,                       \
                  (1 - az) * ay * (1 - ax),       (1 - az) * ay * ax,                             \
                  az * (1 - ay) * (1 - ax),       az * (1 - ay) * ax,                             \
                  az * ay * (1 - ax),             az * ay * ax};                                  \
  const int64_t off[8] = {0, 1, sy, sy + 1, sz, sz + 1, sz + sy, sz + sy + 1};

/* The integer sizes, packed by the caller as dims[8] = {n, ns, hw, channels, conj_channel, h, sz,
 * sy}: particles, samples per slice, half-grid size D (D/2+1), channels per cell (2 complex, 1
 * real), the channel negated for mirrored samples (-1: none), P/2, extended strides. */
#define UNPACK_DIMS                                                                               \
  const int64_t n = dims[0], ns = dims[1], hw = dims[2], channels = dims[3];                      \
  const int64_t conj_channel = dims[4], h = dims[5], sz = dims[6], sy = dims[7];

#define DEFINE_KERNELS(T, SUFFIX)                                                                 \
  void cryograd_insert_##SUFFIX(const int64_t *dims, const T *rot, const T *kx, const T *ky,    \
                                const int64_t *flat, const T *slices, T scale, T *grid) {         \
    UNPACK_DIMS                                                                                   \
    for (int64_t i = 0; i < n; ++i) {                                                             \
      for (int64_t s = 0; s < ns; ++s) {                                                          \
        SAMPLE_GEOMETRY(T)                                                                        \
        T v[4];                                                                                   \
        const T *src = slices + (i * hw + flat[s]) * channels;                                    \
        for (int64_t c = 0; c < channels; ++c) v[c] = src[c];                                     \
        if (conj_channel >= 0) v[conj_channel] *= sgn;                                            \
        for (int k = 0; k < 8; ++k) {                                                             \
          T *cell = grid + (b + off[k]) * channels;                                               \
          for (int64_t c = 0; c < channels; ++c) cell[c] += w[k] * v[c];                          \
        }                                                                                         \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  void cryograd_extract_##SUFFIX(const int64_t *dims, const T *rot, const T *kx, const T *ky,   \
                                 const int64_t *flat, T *slices, T scale, const T *grid) {        \
    UNPACK_DIMS                                                                                   \
    for (int64_t i = 0; i < n; ++i) {                                                             \
      for (int64_t s = 0; s < ns; ++s) {                                                          \
        SAMPLE_GEOMETRY(T)                                                                        \
        T v[4] = {0, 0, 0, 0};                                                                    \
        for (int k = 0; k < 8; ++k) {                                                             \
          const T *cell = grid + (b + off[k]) * channels;                                         \
          for (int64_t c = 0; c < channels; ++c) v[c] += w[k] * cell[c];                          \
        }                                                                                         \
        if (conj_channel >= 0) v[conj_channel] *= sgn;                                            \
        T *dst = slices + (i * hw + flat[s]) * channels;                                          \
        for (int64_t c = 0; c < channels; ++c) dst[c] = v[c];                                     \
      }                                                                                           \
    }                                                                                             \
  }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

/* A Python module with no functions, so that setuptools can build and import it; cryograd calls
 * the loops above through ctypes on this module's file. */
static struct PyModuleDef cpu_slices_module = {PyModuleDef_HEAD_INIT, "_cpu_slices",
                                               "Compiled CPU loops (used through ctypes).", -1,
                                               NULL};

PyMODINIT_FUNC PyInit__cpu_slices(void) { return PyModule_Create(&cpu_slices_module); }

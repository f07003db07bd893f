/* RELION rotation matrices from Euler angles, for cryograd.io.star (compiled into the _cpu_slices
 * extension and called through ctypes; NumPy computes the same where the extension is absent).
 *
 * The formulas and the order of operations of cryograd.geometry.euler_to_matrix and of the NumPy
 * path (degrees times pi/180 as numpy.deg2rad, libm's sin and cos, no fused multiply-adds), so
 * where NumPy uses libm too the matrices are the same to the bit.
 */
#include <math.h>
#include <stdint.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* out[9 i .. 9 i + 8]: the row-major A of rot[i], tilt[i], psi[i] (degrees; psi 0 when NULL),
 * i < n, on nthreads OpenMP threads where built with OpenMP. */
void cryograd_euler_rotations(const double *rot, const double *tilt, const double *psi, int64_t n,
                              double *out, int nthreads) {
  const double deg2rad = M_PI / 180.0;
#pragma omp parallel for schedule(static) num_threads(nthreads < 1 ? 1 : nthreads)
  for (int64_t i = 0; i < n; ++i) {
    const double a = rot[i] * deg2rad, b = tilt[i] * deg2rad;
    const double g = (psi ? psi[i] : 0.0) * deg2rad;
    const double ca = cos(a), sa = sin(a), cb = cos(b), sb = sin(b), cg = cos(g), sg = sin(g);
    const double cgcb = cg * cb, sgcb = sg * cb;
    double *m = out + 9 * i;
    m[0] = cgcb * ca - sg * sa;
    m[1] = cgcb * sa + sg * ca;
    m[2] = -cg * sb;
    m[3] = -(sgcb * ca) - cg * sa;
    m[4] = -(sgcb * sa) + cg * ca;
    m[5] = sg * sb;
    m[6] = sb * ca;
    m[7] = sb * sa;
    m[8] = cb;
  }
}

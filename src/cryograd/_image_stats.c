/* Per-image statistics for cryograd.checks.image_stats (compiled into the _cpu_slices extension,
 * called through ctypes; NumPy computes the same where the extension is absent).
 *
 * For each of n images of npix float32 pixels: whether every pixel is finite, the largest
 * |pixel| (in double; NaN/inf images: inf), and the population standard deviation of the
 * pixels in double precision by two passes (the mean, then the squared deviations), so that a
 * constant image gets exactly 0 (its mean is the pixel value exactly); non-finite images are
 * summarised as all-zero images (std 0), as the NumPy path does. Images run on nthreads threads.
 */
#include <math.h>
#include <stdint.h>

void cryograd_image_stats_f32(const float *images, int64_t n, int64_t npix, uint8_t *finite,
                              double *max_abs, double *std, int nthreads) {
  (void)nthreads; /* unused without OpenMP */
#pragma omp parallel for schedule(static) num_threads(nthreads < 1 ? 1 : nthreads)
  for (int64_t i = 0; i < n; ++i) {
    const float *x = images + i * npix;
    float peak = 0.0f;
    double part[4] = {0.0, 0.0, 0.0, 0.0}; /* four sums: no chain of dependent additions */
    int ok = 1;
    for (int64_t k = 0; k < npix; ++k) {
      const float v = x[k];
      const float a = fabsf(v);
      if (!(a <= 3.402823466e+38f)) ok = 0; /* NaN or inf */
      if (a > peak) peak = a;
      part[k & 3] += (double)v;
    }
    const double sum = (part[0] + part[1]) + (part[2] + part[3]);
    finite[i] = (uint8_t)ok;
    if (!ok) {
      max_abs[i] = INFINITY;
      std[i] = 0.0;
      continue;
    }
    const double mean = sum / (double)npix;
    double sq[4] = {0.0, 0.0, 0.0, 0.0};
    for (int64_t k = 0; k < npix; ++k) {
      const double d = (double)x[k] - mean;
      sq[k & 3] += d * d;
    }
    const double ss = (sq[0] + sq[1]) + (sq[2] + sq[3]);
    max_abs[i] = (double)peak;
    std[i] = npix > 0 ? sqrt(ss / (double)npix) : 0.0;
  }
}

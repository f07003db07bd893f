/* Compiled reader of STAR loop rows (cryograd.io.star_parser): the common case of a large loop,
 * whitespace-separated ASCII rows of numbers and of path-like words (image and micrograph
 * names), parsed in one pass into columns. Compiled into the _cpu_slices extension and called
 * through ctypes; everything it does not take (a comment or quote, a control or non-ASCII byte,
 * a row with another number of fields, a missing-value word, a number outside the exact range
 * below) makes it return -1, and the caller then reads the loop with pandas.
 *
 * Numbers are taken only where every decimal-to-binary conversion gives the same double
 * (pandas' parsers, strtod, fast_float): at most 17 digits with an integer mantissa below 2^53
 * and a power of ten of at most 22, i.e. one correctly rounded multiplication or division of
 * two exactly represented doubles. Integers have at most 18 digits (int64).
 */
#include <stdint.h>
#include <string.h>

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#define MANTISSA_LIMIT 9007199254740992ULL /* 2^53 */

/* The number at t, up to the first blank, tab or newline (or end), scanned and converted in one
 * pass: 0 an int64 (*iv), 1 a double (*dv), -1 not a number this reader takes (a character other
 * than a sign, digits, a point or an exponent before the blank, or out of the exact range). *q
 * is set past the number. */
static int scan_number(const char *t, const char *end, const char **q, int64_t *iv, double *dv) {
  int neg = 0;
  if (t < end && (*t == '-' || *t == '+')) neg = (*t++ == '-');
  uint64_t m = 0;
  int digits = 0, decimals = 0, is_float = 0;
  while (t < end && (unsigned)(*t - '0') <= 9u) {
    if (++digits > 18) return -1;
    m = m * 10 + (uint64_t)(*t++ - '0');
  }
  if (t < end && *t == '.') {
    is_float = 1;
    ++t;
    while (t < end && (unsigned)(*t - '0') <= 9u) {
      if (++digits > 17) return -1;
      m = m * 10 + (uint64_t)(*t++ - '0');
      ++decimals;
    }
  }
  if (digits == 0) return -1;
  int exp10 = -decimals;
  if (t < end && (*t == 'e' || *t == 'E')) {
    is_float = 1;
    ++t;
    int eneg = 0, e = 0, edigits = 0;
    if (t < end && (*t == '-' || *t == '+')) eneg = (*t++ == '-');
    while (t < end && (unsigned)(*t - '0') <= 9u) {
      if (++edigits > 3) return -1;
      e = e * 10 + (*t++ - '0');
    }
    if (edigits == 0) return -1;
    exp10 += eneg ? -e : e;
  }
  if (t < end && *t != ' ' && *t != '\t' && *t != '\n') return -1;
  *q = t;
  if (!is_float) {
    *iv = neg ? -(int64_t)m : (int64_t)m;
    return 0;
  }
  if (digits > 17 || m >= MANTISSA_LIMIT || exp10 > 22 || exp10 < -22) return -1;
  double x = (double)m;
  x = exp10 >= 0 ? x * POW10[exp10] : x / POW10[-exp10];
  *dv = neg ? -x : x;
  return 1;
}

/* Byte classes of a word: 0 part of it, 1 ends it (blank, tab, newline), 2 not taken (a control
 * or non-ASCII byte, a comment or a quote: bytes below 0x21 or above 0x7e, '#', '\'', '"'). */
static const unsigned char WORD_CLASS[256] = {
    2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    1, 0, 2, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

static int is_missing_word(const char *t, int64_t n) {
  return (n == 3 && (memcmp(t, "nan", 3) == 0 || memcmp(t, "NaN", 3) == 0)) ||
         (n == 4 && memcmp(t, "<NA>", 4) == 0);
}

/* The rows of buf[0, len) (whole lines; blank lines skipped), ncol fields each, at most
 * max_rows, up to the first line that starts `data_` (after blanks: the next block), whose
 * offset goes to *stop (len when there is none). kind[c]: 0 numbers, 1 words. slots[c]: 8 bytes
 * per row (numbers: int64, or double where isfloat[c] is set on return; words: the end offset
 * of the row's word in sbuf[c], whose capacity is at least len). Returns the rows read, or -1
 * (the caller reads with pandas). */
int64_t cryograd_star_rows(const char *buf, int64_t len, int64_t ncol, int64_t max_rows,
                           const int8_t *kind, int64_t **slots, char **sbuf, int8_t *isfloat,
                           int64_t *stop) {
  const char *p = buf, *end = buf + len;
  int64_t row = 0;
  *stop = len;
  int64_t used[256];
  if (ncol < 1 || ncol > 256) return -1;
  for (int64_t c = 0; c < ncol; ++c) {
    isfloat[c] = 0;
    used[c] = 0;
  }
  while (p < end) {
    const char *line = p;
    while (p < end && (*p == ' ' || *p == '\t')) ++p;
    if (p == end) break;
    if (*p == 'd' && end - p >= 5 && memcmp(p, "data_", 5) == 0) { /* the next block */
      *stop = line - buf;
      return row;
    }
    if (*p == '\n') { /* a blank line */
      ++p;
      continue;
    }
    if (row >= max_rows) return -1;
    for (int64_t c = 0; c < ncol; ++c) {
      const char *t = p;
      if (kind[c] == 1) {
        unsigned char cls = 0;
        while (p < end && (cls = WORD_CLASS[(unsigned char)*p]) == 0) ++p;
        if (p < end && cls == 2) return -1;
        if (p == t) return -1; /* fewer fields than columns */
        if (is_missing_word(t, p - t)) return -1;
        memcpy(sbuf[c] + used[c], t, (size_t)(p - t));
        used[c] += p - t;
        slots[c][row] = used[c];
      } else {
        int64_t iv = 0;
        double dv = 0.0;
        const int got = scan_number(t, end, &p, &iv, &dv); /* -1 too when fields run out */
        if (got < 0) return -1;
        if (got == 1 && !isfloat[c]) { /* the piece's integers so far become doubles */
          for (int64_t r = 0; r < row; ++r) {
            const int64_t v = slots[c][r];
            if (v >= (int64_t)MANTISSA_LIMIT || v <= -(int64_t)MANTISSA_LIMIT) return -1;
            const double d = (double)v;
            memcpy(&slots[c][r], &d, sizeof d);
          }
          isfloat[c] = 1;
        }
        if (got == 0 && isfloat[c]) {
          if (iv >= (int64_t)MANTISSA_LIMIT || iv <= -(int64_t)MANTISSA_LIMIT) return -1;
          dv = (double)iv;
        }
        if (isfloat[c]) memcpy(&slots[c][row], &dv, sizeof dv);
        else slots[c][row] = iv;
      }
      while (p < end && (*p == ' ' || *p == '\t')) ++p;
    }
    if (p < end && *p != '\n') return -1; /* more fields than columns */
    if (p < end) ++p;
    ++row;
  }
  return row;
}

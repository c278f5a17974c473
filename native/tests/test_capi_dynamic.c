/*
 * test_capi_dynamic.c: the C API on a model with symbolic dims (mmopt compile --dim), as a plain C
 * program.
 *
 *   test_capi_dynamic MODEL
 *
 * MODEL is an artifact (NAME, NAME.so or NAME.json) with symbolic dims on its inputs; every input's
 * dtype must be one of the numeric types (their contents are not checked). The test derives its
 * sizes from the dims the model describes: each dim at its minimum, at its maximum, at an odd
 * number of steps above the minimum, and each bucket's sizes. It checks the description (-1 on
 * symbolic axes, the dims, the buckets), that every one of those sizes runs (through the bucket's
 * function exactly when the sizes are a bucket's), with concrete output shapes, that aligned and
 * unaligned inputs of changing sizes agree, and that shapes the ranges do not allow fail with
 * MMOPT_ERROR_MISMATCH and a one-line message: a size outside the range, not a multiple, a wrong
 * rank, a fixed dim that differs, and (for models where two inputs share a dim) inputs that
 * disagree. Each check prints "ok   <what>..." or "FAIL <what>..."; each refused shape also prints
 *
 *   refused<TAB>NAME=D1,D2,... NAME=...<TAB><the error message>
 *
 * (all inputs' shapes) so that a caller can compare the message with mmopt's Python runtime. The
 * exit status is the number of failures.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmopt_model.h"

#define MAX_INPUTS 16
#define MAX_DIMS 16

static int failures = 0;

static void check(const char *what, int cond, const char *detail) {
  printf("%s %s%s%s\n", cond ? "ok  " : "FAIL", what, detail ? ": " : "", detail ? detail : "");
  if (!cond) ++failures;
}

static void expect_ok(const char *what, int status) {
  check(what, status == MMOPT_OK, status == MMOPT_OK ? NULL : mmopt_last_error());
}

typedef struct {
  mmopt_model *m;
  int n_in, n_dims;
  mmopt_tensor_info in[MAX_INPUTS];
  const int32_t *dims[MAX_INPUTS];
  int64_t shape[MAX_INPUTS][MAX_DIMS]; /* the shapes of the next call */
  int32_t ndim[MAX_INPUTS];
  void *data[MAX_INPUTS];
} model_t;

/* Every input's shape for the dim sizes `sizes` (fixed axes as described). */
static void shapes_for(model_t *t, const int64_t *sizes) {
  for (int i = 0; i < t->n_in; ++i) {
    t->ndim[i] = t->in[i].ndim;
    for (int32_t a = 0; a < t->in[i].ndim; ++a) {
      t->shape[i][a] = t->dims[i][a] >= 0 ? sizes[t->dims[i][a]] : t->in[i].shape[a];
    }
  }
}

static size_t bytes_of(const model_t *t, int i) {
  size_t n = mmopt_dtype_size(t->in[i].dtype);
  for (int32_t a = 0; a < t->ndim[i]; ++a) n *= (size_t)t->shape[i][a];
  return n;
}

/* Sets every input: deterministic bytes, at `offset` bytes past a 64-byte boundary (0: borrowed,
 * otherwise copied by the model). */
static int set_all(model_t *t, size_t offset) {
  for (int i = 0; i < t->n_in; ++i) {
    size_t n = bytes_of(t, i);
    void *fresh = NULL;
    if (posix_memalign(&fresh, 64, n + 64) != 0) return MMOPT_ERROR_RUNTIME;
    unsigned char *p = (unsigned char *)fresh + offset;
    for (size_t k = 0; k < n; ++k) p[k] = t->in[i].dtype == MMOPT_FLOAT32 && k % 4 == 3 ? 0x3e : 0;
    int status = mmopt_model_set_input(t->m, t->in[i].name, p, t->in[i].dtype, t->ndim[i],
                                       t->shape[i]);
    if (status != MMOPT_OK) { /* the model may still borrow the input set before */
      free(fresh);
      return status;
    }
    free(t->data[i]);
    t->data[i] = fresh;
  }
  return MMOPT_OK;
}

static void shapes_text(const model_t *t, char *buf, size_t size) {
  size_t n = 0;
  buf[0] = 0;
  for (int i = 0; i < t->n_in && n < size; ++i) {
    n += (size_t)snprintf(buf + n, size - n, "%s%s=", i ? " " : "", t->in[i].name);
    for (int32_t a = 0; a < t->ndim[i] && n < size; ++a) {
      n += (size_t)snprintf(buf + n, size - n, "%s%lld", a ? "," : "", (long long)t->shape[i][a]);
    }
  }
}

/* The current shapes must be refused with MMOPT_ERROR_MISMATCH and a one-line message that
 * contains `expect`: at set_input (at_run 0) or at run (at_run 1). */
static void expect_refused(model_t *t, const char *what, const char *expect, int at_run) {
  int status = set_all(t, 0);
  if (at_run) {
    if (status != MMOPT_OK) {
      check(what, 0, mmopt_last_error());
      return;
    }
    status = mmopt_model_run(t->m);
  }
  const char *msg = mmopt_last_error();
  char detail[1024], shapes[512];
  snprintf(detail, sizeof detail, "status %d: %s", status, msg);
  check(what, status == MMOPT_ERROR_MISMATCH && msg[0] && !strchr(msg, '\n') &&
                  strstr(msg, expect) != NULL,
        detail);
  shapes_text(t, shapes, sizeof shapes);
  printf("refused\t%s\t%s\n", shapes, msg);
}

/* The function of the bucket whose sizes are `sizes`, or NULL (main). */
static const char *bucket_for(const model_t *t, const int64_t *sizes) {
  for (int b = 0; b < mmopt_model_num_buckets(t->m); ++b) {
    const char *function;
    const int64_t *bs;
    mmopt_model_bucket_info(t->m, b, &function, &bs);
    if (memcmp(bs, sizes, sizeof(int64_t) * (size_t)t->n_dims) == 0) return function;
  }
  return NULL;
}

/* Runs at `sizes`: the function must be `bucket` (NULL: main), the outputs' named axes the sizes.
 * Returns the first output's bytes (malloc'ed) in *out when out is not NULL. */
static void run_at(model_t *t, const int64_t *sizes, const char *bucket, size_t offset,
                   unsigned char **out, size_t *out_bytes) {
  char what[768], shapes[512];
  shapes_for(t, sizes);
  shapes_text(t, shapes, sizeof shapes);
  snprintf(what, sizeof what, "run at %s%s", shapes, offset ? " (unaligned)" : "");
  int status = set_all(t, offset);
  if (status == MMOPT_OK) status = mmopt_model_run(t->m);
  expect_ok(what, status);
  if (status != MMOPT_OK) return;
  const char *function = NULL;
  mmopt_model_last_function(t->m, &function);
  snprintf(what, sizeof what, "  ... ran %s", function ? function : "(null)");
  check(what, function && strcmp(function, bucket ? bucket : "main") == 0, NULL);
  int n_out = mmopt_model_num_outputs(t->m);
  for (int o = 0; o < n_out; ++o) {
    mmopt_tensor_info info;
    const int32_t *dims = NULL;
    int32_t ndim = -1;
    const int64_t *shape = NULL;
    const void *data = NULL;
    size_t nbytes = 0;
    mmopt_model_output_info(t->m, o, &info);
    mmopt_model_output_dims(t->m, o, &dims);
    expect_ok("  ... output_shape", mmopt_model_output_shape(t->m, o, &ndim, &shape));
    expect_ok("  ... output", mmopt_model_output(t->m, o, &data, &nbytes));
    int ok = ndim == info.ndim;
    size_t n = mmopt_dtype_size(info.dtype);
    for (int32_t a = 0; ok && a < ndim; ++a) {
      if (dims && dims[a] >= 0) ok = shape[a] == sizes[dims[a]];
      else if (info.shape[a] >= 0) ok = shape[a] == info.shape[a];
      n *= (size_t)shape[a];
    }
    snprintf(what, sizeof what, "  ... output %s has the sizes of this run, %zu bytes", info.name,
             nbytes);
    check(what, ok && n == nbytes, NULL);
    if (o == 0 && out) {
      *out = malloc(nbytes ? nbytes : 1);
      *out_bytes = nbytes;
      expect_ok("  ... copy_output", mmopt_model_copy_output(t->m, 0, *out, nbytes));
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL\n", argv[0]);
    return 2;
  }
  printf("%s\n", mmopt_runtime_version());
  model_t t;
  memset(&t, 0, sizeof t);
  expect_ok("open the model", mmopt_model_open(argv[1], &t.m));
  if (!t.m) return failures + 1;

  /* --- the description ----------------------------------------------------------------- */
  t.n_in = mmopt_model_num_inputs(t.m);
  t.n_dims = mmopt_model_num_dims(t.m);
  check("the model has symbolic dims", t.n_dims > 0 && t.n_dims <= MAX_DIMS, NULL);
  check("num_dims(NULL) is -1", mmopt_model_num_dims(NULL) == -1, NULL);
  if (t.n_dims <= 0 || t.n_dims > MAX_DIMS || t.n_in > MAX_INPUTS) return failures + 1;
  mmopt_dim_info dims[MAX_DIMS];
  for (int d = 0; d < t.n_dims; ++d) {
    expect_ok("dim_info", mmopt_model_dim_info(t.m, d, &dims[d]));
    char what[256];
    snprintf(what, sizeof what, "  ... dim %s: %lld..%lld, multiple %lld", dims[d].name,
             (long long)dims[d].min, (long long)dims[d].max, (long long)dims[d].multiple);
    check(what, dims[d].min >= 0 && dims[d].max >= dims[d].min && dims[d].multiple >= 1 &&
                    dims[d].min % dims[d].multiple == 0,
          NULL);
  }
  mmopt_dim_info unused;
  check("dim_info out of range is an error",
        mmopt_model_dim_info(t.m, t.n_dims, &unused) == MMOPT_ERROR_INVALID_ARGUMENT, NULL);
  int first = -1, first_axis = -1; /* the first input axis with a symbolic dim */
  int fixed = -1, fixed_axis = -1;  /* a fixed input axis */
  for (int i = 0; i < t.n_in; ++i) {
    expect_ok("input_info", mmopt_model_input_info(t.m, i, &t.in[i]));
    expect_ok("input_dims", mmopt_model_input_dims(t.m, i, &t.dims[i]));
    int symbolic = 0, consistent = 1;
    for (int32_t a = 0; a < t.in[i].ndim; ++a) {
      int d = t.dims[i][a];
      consistent &= (d >= 0) == (t.in[i].shape[a] == -1) && d < t.n_dims;
      if (d >= 0) {
        symbolic = 1;
        if (first < 0) first = i, first_axis = a;
      } else if (fixed < 0) {
        fixed = i, fixed_axis = a;
      }
    }
    char what[256];
    snprintf(what, sizeof what, "input %s: -1 on each symbolic axis, nbytes %zu", t.in[i].name,
             t.in[i].nbytes);
    check(what, consistent && (!symbolic || t.in[i].nbytes == 0), NULL);
  }
  if (first < 0) return failures + 1;
  int n_buckets = mmopt_model_num_buckets(t.m);
  for (int b = 0; b < n_buckets; ++b) {
    const char *function = NULL;
    const int64_t *sizes = NULL;
    expect_ok("bucket_info", mmopt_model_bucket_info(t.m, b, &function, &sizes));
    int ok = function && sizes;
    for (int d = 0; ok && d < t.n_dims; ++d) {
      ok = sizes[d] >= dims[d].min && sizes[d] <= dims[d].max;
    }
    check("  ... a function and sizes in range", ok, function);
  }
  check("bucket_info out of range is an error",
        mmopt_model_bucket_info(t.m, n_buckets, NULL, NULL) == MMOPT_ERROR_INVALID_ARGUMENT, NULL);
  const char *none = NULL;
  check("last_function before a run is an error",
        mmopt_model_last_function(t.m, &none) == MMOPT_ERROR_STATE, NULL);
  int32_t nd;
  const int64_t *sh;
  check("output_shape before a run is an error",
        mmopt_model_output_shape(t.m, 0, &nd, &sh) == MMOPT_ERROR_STATE, NULL);

  /* --- sizes in range run ------------------------------------------------------------- */
  int64_t lo[MAX_DIMS], hi[MAX_DIMS], odd[MAX_DIMS];
  for (int d = 0; d < t.n_dims; ++d) {
    int64_t steps = (dims[d].max - dims[d].min) / dims[d].multiple;
    lo[d] = dims[d].min;
    hi[d] = dims[d].max;
    odd[d] = dims[d].min + (steps > 2 ? (steps / 3) | 1 : steps) * dims[d].multiple;
  }
  const int64_t *cases[] = {lo, hi, odd};
  for (int c = 0; c < 3; ++c) run_at(&t, cases[c], bucket_for(&t, cases[c]), 0, NULL, NULL);
  for (int b = 0; b < n_buckets; ++b) {
    const char *function;
    const int64_t *sizes;
    mmopt_model_bucket_info(t.m, b, &function, &sizes);
    run_at(&t, sizes, function, 0, NULL, NULL);
  }
  /* more size sets than the model keeps calls for, unaligned (copied into buffers that grow and
   * are reused), then the odd sizes again: aligned and unaligned inputs agree */
  unsigned char *aligned = NULL, *unaligned = NULL;
  size_t aligned_bytes = 0, unaligned_bytes = 0;
  run_at(&t, odd, bucket_for(&t, odd), 0, &aligned, &aligned_bytes);
  int64_t sizes[MAX_DIMS];
  for (int k = 0; k < 12; ++k) {
    for (int d = 0; d < t.n_dims; ++d) {
      int64_t steps = (dims[d].max - dims[d].min) / dims[d].multiple;
      sizes[d] = dims[d].min + (steps ? (k * (d + 2) + d) % (steps + 1) : 0) * dims[d].multiple;
    }
    run_at(&t, sizes, bucket_for(&t, sizes), 4, NULL, NULL);
  }
  run_at(&t, odd, bucket_for(&t, odd), 4, &unaligned, &unaligned_bytes);
  check("aligned and unaligned inputs give the same output at the odd sizes",
        aligned && unaligned && aligned_bytes == unaligned_bytes &&
            memcmp(aligned, unaligned, aligned_bytes) == 0,
        NULL);
  free(aligned);
  free(unaligned);

  /* --- shapes the ranges do not allow ----------------------------------------------- */
  const mmopt_dim_info *dim = &dims[t.dims[first][first_axis]];
  shapes_for(&t, lo);
  t.shape[first][first_axis] = dim->max + dim->multiple;
  expect_refused(&t, "a size above the range", "outside the compiled range", 0);
  if (dim->min - dim->multiple >= 0) {
    shapes_for(&t, lo);
    t.shape[first][first_axis] = dim->min - dim->multiple;
    expect_refused(&t, "a size below the range", "outside the compiled range", 0);
  }
  for (int d = 0; d < t.n_dims; ++d) {
    if (dims[d].multiple == 1) continue;
    for (int i = 0; i < t.n_in; ++i) {
      for (int32_t a = 0; a < t.in[i].ndim; ++a) {
        if (t.dims[i][a] != d) continue;
        shapes_for(&t, lo);
        t.shape[i][a] = dims[d].min + 1;
        expect_refused(&t, "a size that is not a multiple", "not a multiple of", 0);
        i = t.n_in;
        break;
      }
    }
    break;
  }
  shapes_for(&t, lo);
  t.ndim[first] -= 1;
  expect_refused(&t, "a wrong rank", "rank", 0);
  shapes_for(&t, lo);
  t.ndim[first] += 1;
  t.shape[first][t.ndim[first] - 1] = 1;
  expect_refused(&t, "a higher rank", "rank", 0);
  if (fixed >= 0) {
    shapes_for(&t, lo);
    t.shape[fixed][fixed_axis] += 1;
    expect_refused(&t, "a fixed dim that differs", "the artifact takes", 0);
  }
  /* two inputs sharing a dim, at different sizes: refused at run, naming the later input */
  for (int i = 0; i < t.n_in; ++i) {
    for (int32_t a = 0; a < t.in[i].ndim; ++a) {
      int d = t.dims[i][a];
      if (d < 0 || dims[d].max == dims[d].min) continue;
      for (int j = i + 1; j < t.n_in; ++j) {
        for (int32_t b = 0; b < t.in[j].ndim; ++b) {
          if (t.dims[j][b] != d) continue;
          shapes_for(&t, lo);
          t.shape[j][b] = dims[d].min + dims[d].multiple;
          expect_refused(&t, "two inputs disagreeing on a dim", "but input", 1);
          check("  ... outputs of the failed run are not readable",
                mmopt_model_output(t.m, 0, NULL, NULL) == MMOPT_ERROR_STATE, NULL);
          goto agreed;
        }
      }
    }
  }
agreed:
  /* after refusals the model still runs */
  run_at(&t, lo, bucket_for(&t, lo), 0, NULL, NULL);

  mmopt_model_close(t.m);
  for (int i = 0; i < t.n_in; ++i) free(t.data[i]);
  printf("%d failure(s)\n", failures);
  return failures;
}

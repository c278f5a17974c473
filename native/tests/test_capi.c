/*
 * test_capi.c: the C API's error paths and ownership rules, as a plain C program.
 *
 *   test_capi MODEL WORKDIR [FOREIGN_SO]
 *
 * MODEL is a working artifact (NAME, NAME.so or NAME.json) with a float32 first input; WORKDIR is a
 * scratch folder for broken copies of it; FOREIGN_SO (optional) is an artifact library built for
 * another architecture. Each check prints "ok   <what>: <error string>" or "FAIL <what>"; the exit
 * status is the number of failures (0: all passed). A crash is a failure too (the caller sees a
 * signal instead of an exit status).
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmopt_model.h"

static int failures = 0;

/* An error must be a non-zero status with a non-empty, one-line message. */
static void expect_error(const char *what, int status, int expected) {
  const char *msg = mmopt_last_error();
  int ok = status != MMOPT_OK && (expected < 0 || status == expected) && msg && msg[0] &&
           !strchr(msg, '\n');
  printf("%s %s: status %d: %s\n", ok ? "ok  " : "FAIL", what, status, msg ? msg : "(null)");
  if (!ok) ++failures;
}

static void expect_ok(const char *what, int status) {
  printf("%s %s%s%s\n", status == MMOPT_OK ? "ok  " : "FAIL", what,
         status == MMOPT_OK ? "" : ": ", status == MMOPT_OK ? "" : mmopt_last_error());
  if (status != MMOPT_OK) ++failures;
}

static void expect_true(const char *what, int cond) {
  printf("%s %s\n", cond ? "ok  " : "FAIL", what);
  if (!cond) ++failures;
}

/* Two threads, each with its own handle, run the model at the same time; each must reproduce the
 * single-threaded output every time. */
typedef struct {
  const char *path;
  const float *x;
  const unsigned char *expected;
  size_t nbytes;
  int mismatches;
  int errors;
} worker_t;

static void *worker(void *arg) {
  worker_t *w = (worker_t *)arg;
  mmopt_model *m = NULL;
  if (mmopt_model_open(w->path, &m) != MMOPT_OK) {
    w->errors++;
    return NULL;
  }
  mmopt_tensor_info in;
  mmopt_model_input_info(m, 0, &in);
  int n_in = mmopt_model_num_inputs(m);
  void *zeros[16] = {0};
  for (int i = 1; i < n_in && i < 16; ++i) {
    mmopt_tensor_info t;
    mmopt_model_input_info(m, i, &t);
    zeros[i] = calloc(1, t.nbytes + 1);
    mmopt_model_set_input(m, t.name, zeros[i], t.dtype, t.ndim, t.shape);
  }
  for (int k = 0; k < 20; ++k) {
    const void *y;
    size_t n;
    if (mmopt_model_set_input(m, in.name, w->x, MMOPT_FLOAT32, in.ndim, in.shape) != MMOPT_OK ||
        mmopt_model_run(m) != MMOPT_OK || mmopt_model_output(m, 0, &y, &n) != MMOPT_OK) {
      w->errors++;
      continue;
    }
    if (n != w->nbytes || memcmp(y, w->expected, n) != 0) w->mismatches++;
  }
  mmopt_model_close(m);
  for (int i = 0; i < 16; ++i) free(zeros[i]);
  return NULL;
}

/* Reads a whole file; NULL when it cannot. */
static unsigned char *slurp(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return buf;
}

static int spit(const char *path, const void *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(data, 1, size, f) == size;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Opening PREFIX (with a valid description) must fail with MMOPT_ERROR_LOAD, never crash. */
static void expect_open_fails(const char *what, const char *prefix, int expected) {
  mmopt_model *m = (mmopt_model *)0x1;
  int status = mmopt_model_open(prefix, &m);
  expect_error(what, status, expected);
  expect_true("  ... and *out is NULL", m == NULL);
  mmopt_model_close(m);
}

static void strip_suffix(char *p) {
  size_t n = strlen(p);
  if (n > 3 && !strcmp(p + n - 3, ".so")) p[n - 3] = 0;
  else if (n > 5 && !strcmp(p + n - 5, ".json")) p[n - 5] = 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL WORKDIR [FOREIGN_SO]\n", argv[0]);
    return 2;
  }
  char prefix[4096], broken[4200], path[4300];
  snprintf(prefix, sizeof prefix, "%s", argv[1]);
  strip_suffix(prefix);
  const char *work = argv[2];
  printf("%s\n", mmopt_runtime_version());
  /* the thread count the library chose when it was loaded (the physical cores, unless set) */
  printf("threads %s\n", getenv("TVM_NUM_THREADS") ? getenv("TVM_NUM_THREADS") : "(unset)");

  /* --- opening -------------------------------------------------------------------------- */
  mmopt_model *m = NULL;
  expect_error("open NULL path", mmopt_model_open(NULL, &m), MMOPT_ERROR_INVALID_ARGUMENT);
  expect_error("open NULL out", mmopt_model_open(prefix, NULL), MMOPT_ERROR_INVALID_ARGUMENT);
  expect_open_fails("open a bad path", "/nonexistent/dir/model", MMOPT_ERROR_NOT_FOUND);

  /* the library and description, read once to make broken copies */
  size_t so_size = 0, json_size = 0;
  snprintf(path, sizeof path, "%s.so", prefix);
  unsigned char *so = slurp(path, &so_size);
  snprintf(path, sizeof path, "%s.json", prefix);
  unsigned char *json = slurp(path, &json_size);
  if (!so || !json) {
    fprintf(stderr, "cannot read %s.so/.json\n", prefix);
    return 2;
  }
  /* a library cut in half, in a quarter, and after the ELF header: no crash, an error */
  const size_t cuts[] = {so_size / 2, so_size / 4, 200, 10, 0};
  for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; ++k) {
    snprintf(broken, sizeof broken, "%s/truncated%zu", work, k);
    snprintf(path, sizeof path, "%s.so", broken);
    spit(path, so, cuts[k]);
    snprintf(path, sizeof path, "%s.json", broken);
    spit(path, json, json_size);
    char what[128];
    snprintf(what, sizeof what, "open a library truncated to %zu of %zu bytes", cuts[k], so_size);
    expect_open_fails(what, broken, MMOPT_ERROR_LOAD);
  }
  /* a library that is not one */
  snprintf(broken, sizeof broken, "%s/notelf", work);
  snprintf(path, sizeof path, "%s.so", broken);
  spit(path, "this is not a shared library\n", 29);
  snprintf(path, sizeof path, "%s.json", broken);
  spit(path, json, json_size);
  expect_open_fails("open a text file as library", broken, MMOPT_ERROR_LOAD);
  /* a corrupt description next to a good library */
  snprintf(broken, sizeof broken, "%s/badjson", work);
  snprintf(path, sizeof path, "%s.so", broken);
  spit(path, so, so_size);
  snprintf(path, sizeof path, "%s.json", broken);
  spit(path, json, json_size / 2);
  expect_open_fails("open with a truncated description", broken, MMOPT_ERROR_LOAD);
  spit(path, "{\"inputs\": 3}", 13);
  expect_open_fails("open with a description that is not an artifact's", broken, MMOPT_ERROR_LOAD);
  /* the description without its library */
  snprintf(broken, sizeof broken, "%s/nolib", work);
  snprintf(path, sizeof path, "%s.json", broken);
  spit(path, json, json_size);
  expect_open_fails("open without the library", broken, MMOPT_ERROR_NOT_FOUND);
  /* a library for another architecture */
  if (argc > 3) {
    size_t foreign_size = 0;
    unsigned char *foreign = slurp(argv[3], &foreign_size);
    snprintf(broken, sizeof broken, "%s/foreign", work);
    snprintf(path, sizeof path, "%s.so", broken);
    if (foreign) spit(path, foreign, foreign_size);
    snprintf(path, sizeof path, "%s.json", broken);
    spit(path, json, json_size);
    expect_open_fails("open a library built for another architecture", broken, MMOPT_ERROR_LOAD);
    free(foreign);
  }
  free(so);
  free(json);

  /* --- a good model, used wrongly ------------------------------------------------------- */
  expect_ok("open the model", mmopt_model_open(argv[1], &m));
  if (!m) return failures + 1;
  mmopt_tensor_info in, out;
  expect_ok("input_info 0", mmopt_model_input_info(m, 0, &in));
  expect_ok("output_info 0", mmopt_model_output_info(m, 0, &out));
  expect_true("first input is float32", in.dtype == MMOPT_FLOAT32);
  expect_error("input_info out of range", mmopt_model_input_info(m, 99, &in),
               MMOPT_ERROR_INVALID_ARGUMENT);
  mmopt_model_input_info(m, 0, &in);
  expect_error("input_info NULL info", mmopt_model_input_info(m, 0, NULL),
               MMOPT_ERROR_INVALID_ARGUMENT);
  expect_true("num_inputs(NULL) is -1", mmopt_model_num_inputs(NULL) == -1);
  int index = -1;
  expect_error("find_input unknown name", mmopt_model_find_input(m, "no_such_input", &index),
               MMOPT_ERROR_NOT_FOUND);
  expect_ok("find_input by name", mmopt_model_find_input(m, in.name, &index));
  expect_true("  ... index 0", index == 0);

  size_t n = in.nbytes / 4;
  float *x = NULL;
  if (posix_memalign((void **)&x, 64, in.nbytes + 64) != 0) return failures + 1;
  for (size_t i = 0; i < n; ++i) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;

  expect_error("run before inputs are set", mmopt_model_run(m), MMOPT_ERROR_STATE);
  expect_error("output before a run", mmopt_model_output(m, 0, NULL, NULL), MMOPT_ERROR_STATE);
  expect_error("set_input wrong name",
               mmopt_model_set_input(m, "no_such_input", x, MMOPT_FLOAT32, in.ndim, in.shape),
               MMOPT_ERROR_NOT_FOUND);
  expect_error("set_input wrong dtype (int32)",
               mmopt_model_set_input(m, in.name, x, MMOPT_INT32, in.ndim, in.shape),
               MMOPT_ERROR_MISMATCH);
  expect_error("set_input wrong dtype (float64)",
               mmopt_model_set_input(m, in.name, x, MMOPT_FLOAT64, in.ndim, in.shape),
               MMOPT_ERROR_MISMATCH);
  expect_error("set_input unknown dtype code",
               mmopt_model_set_input(m, in.name, x, (mmopt_dtype)77, in.ndim, in.shape),
               MMOPT_ERROR_INVALID_ARGUMENT);
  int64_t shape[16];
  memcpy(shape, in.shape, sizeof(int64_t) * (size_t)in.ndim);
  shape[in.ndim - 1] += 1;
  expect_error("set_input wrong shape",
               mmopt_model_set_input(m, in.name, x, MMOPT_FLOAT32, in.ndim, shape),
               MMOPT_ERROR_MISMATCH);
  expect_error("set_input wrong rank",
               mmopt_model_set_input(m, in.name, x, MMOPT_FLOAT32, in.ndim - 1, in.shape),
               MMOPT_ERROR_MISMATCH);
  expect_error("set_input negative rank",
               mmopt_model_set_input(m, in.name, x, MMOPT_FLOAT32, -1, in.shape),
               MMOPT_ERROR_INVALID_ARGUMENT);
  expect_error("set_input NULL data",
               mmopt_model_set_input(m, in.name, NULL, MMOPT_FLOAT32, in.ndim, in.shape),
               MMOPT_ERROR_INVALID_ARGUMENT);
  expect_error("set_input NULL model",
               mmopt_model_set_input(NULL, in.name, x, MMOPT_FLOAT32, in.ndim, in.shape),
               MMOPT_ERROR_INVALID_ARGUMENT);

  /* --- and used rightly: aligned (no copy) and unaligned (copied) inputs agree -------------- */
  int n_in = mmopt_model_num_inputs(m);
  void **zeros = calloc((size_t)n_in + 1, sizeof(void *));
  for (int i = 1; i < n_in; ++i) { /* other inputs (if any): zeros, kept until close */
    mmopt_tensor_info t;
    mmopt_model_input_info(m, i, &t);
    zeros[i] = calloc(1, t.nbytes + 1);
    mmopt_model_set_input(m, t.name, zeros[i], t.dtype, t.ndim, t.shape);
  }
  expect_ok("set_input (64-byte aligned, borrowed)",
            mmopt_model_set_input(m, in.name, x, MMOPT_FLOAT32, in.ndim, in.shape));
  expect_ok("run", mmopt_model_run(m));
  const void *y = NULL;
  size_t y_bytes = 0;
  expect_ok("output 0", mmopt_model_output(m, 0, &y, &y_bytes));
  expect_true("  ... size as described", y_bytes == out.nbytes && y != NULL);
  unsigned char *first = malloc(y_bytes ? y_bytes : 1);
  expect_ok("copy_output 0", mmopt_model_copy_output(m, 0, first, y_bytes));
  if (y_bytes > 0) {
    expect_error("copy_output into a small buffer", mmopt_model_copy_output(m, 0, first, y_bytes - 1),
                 MMOPT_ERROR_MISMATCH);
  }
  expect_error("output index out of range", mmopt_model_output(m, 99, &y, &y_bytes),
               MMOPT_ERROR_INVALID_ARGUMENT);

  float *shifted = (float *)((char *)x + 4); /* 4-byte aligned only: the model copies it */
  memmove(shifted, x, in.nbytes);
  expect_ok("set_input (unaligned, copied)",
            mmopt_model_set_input(m, in.name, shifted, MMOPT_FLOAT32, in.ndim, in.shape));
  memset(x, 0, 4); /* the copy was taken at set_input: clobbering the source does not matter */
  expect_ok("run again", mmopt_model_run(m));
  unsigned char *second = malloc(y_bytes ? y_bytes : 1);
  expect_ok("copy_output again", mmopt_model_copy_output(m, 0, second, y_bytes));
  expect_true("unaligned and aligned inputs give the same output",
              memcmp(first, second, y_bytes) == 0);

  mmopt_model_close(m);
  for (int i = 0; i < n_in; ++i) free(zeros[i]);

  /* --- distinct handles in distinct threads ----------------------------------------------- */
  memmove(x, shifted, in.nbytes); /* the input of the first run again */
  worker_t workers[2];
  pthread_t threads[2];
  for (int t = 0; t < 2; ++t) {
    worker_t w = {argv[1], x, first, y_bytes, 0, 0};
    workers[t] = w;
    pthread_create(&threads[t], NULL, worker, &workers[t]);
  }
  for (int t = 0; t < 2; ++t) pthread_join(threads[t], NULL);
  expect_true("two threads with their own handles reproduce the output 2 x 20 times",
              workers[0].errors + workers[1].errors + workers[0].mismatches +
                      workers[1].mismatches == 0);
  free(zeros);
  mmopt_model_close(NULL);
  expect_true("close(NULL) is a no-op", 1);
  free(first);
  free(second);
  free(x);
  printf("%d failure(s)\n", failures);
  return failures;
}

/*
 * mmopt-run: run an mmopt artifact on .npy inputs, write .npy outputs, optionally time it.
 * Written against the public C API (mmopt_model.h) only; no Python anywhere.
 *
 *   mmopt-run [MODEL] [-i NAME=FILE.npy]... [--shape NAME=D1,D2,...]... [-o DIR] [--bench N]
 *             [--warmup N] [--threads N]
 *   mmopt-run [MODEL] --info
 *
 * MODEL is NAME, NAME.so or NAME.json; without it, the model in the bundle (../model/ next to
 * this binary) is used. Inputs not given are filled with zeros (with a warning), of the model's
 * shape or of the shape --shape gives; an input with symbolic dims has no shape of its own, so it
 * must be given with -i or --shape. Inputs of a model with symbolic dims may have any shape the
 * dims' ranges allow (--info lists the dims and the buckets). With -o, each output is written to
 * DIR/<output name>.npy (characters other than [A-Za-z0-9._-] become '_') and one line
 * "wrote<TAB>NAME<TAB>PATH" is printed per output; a model with symbolic dims also prints
 * "function<TAB>NAME", the compiled function that ran (main or a bucket's). --bench N runs N timed
 * calls after --warmup calls (default 3) and prints min/median/mean latency and the peak RSS.
 * Exit status: 0 ok, 1 a model or runtime error (a shape the model does not take included),
 * 2 a usage or file error.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "mmopt_model.h"

#define MAX_DIMS 32

static void usage(FILE *to) {
  fprintf(to,
          "usage: mmopt-run [MODEL] [-i NAME=FILE.npy]... [--shape NAME=D1,D2,...]... [-o DIR]\n"
          "                 [--bench N] [--warmup N] [--threads N] [--info]\n"
          "  MODEL          NAME, NAME.so or NAME.json (default: the bundle's model)\n"
          "  -i NAME=FILE   an input as .npy (repeatable; FILE alone for a one-input model)\n"
          "  --shape NAME=D1,D2,...  zeros of this shape for an input not given with -i\n"
          "                 (needed for inputs with symbolic dims)\n"
          "  -o DIR         write each output to DIR/NAME.npy\n"
          "  --bench N      time N runs; print min/median/mean latency and peak RSS\n"
          "  --warmup N     untimed runs before timing (default 3)\n"
          "  --threads N    TVM worker threads (default: one per core)\n"
          "  --info         print the model's inputs, outputs, symbolic dims and buckets; exit\n");
}

/* The C API's error in one line, after `what` (NULL: the message alone; it names the input). */
static int fail_model(const char *what) {
  if (what) fprintf(stderr, "mmopt-run: error: %s: %s\n", what, mmopt_last_error());
  else fprintf(stderr, "mmopt-run: error: %s\n", mmopt_last_error());
  return 1;
}

/* ------------------------------------------------------------------------------------------- */
/* .npy files */

struct npy_code {
  const char *descr;
  mmopt_dtype dtype;
};

static const struct npy_code NPY_CODES[] = {
    {"<f4", MMOPT_FLOAT32}, {"<f2", MMOPT_FLOAT16}, {"<f8", MMOPT_FLOAT64},
    {"|i1", MMOPT_INT8},    {"<i2", MMOPT_INT16},   {"<i4", MMOPT_INT32},
    {"<i8", MMOPT_INT64},   {"|u1", MMOPT_UINT8},   {"<u2", MMOPT_UINT16},
    {"<u4", MMOPT_UINT32},  {"<u8", MMOPT_UINT64},  {"|b1", MMOPT_BOOL},
    {"<i1", MMOPT_INT8},    {"<u1", MMOPT_UINT8},
};

static const char *npy_descr(mmopt_dtype dtype) {
  for (size_t i = 0; i < sizeof(NPY_CODES) / sizeof(NPY_CODES[0]); ++i) {
    if (NPY_CODES[i].dtype == dtype) return NPY_CODES[i].descr;
  }
  return NULL;
}

typedef struct {
  mmopt_dtype dtype;
  int32_t ndim;
  int64_t shape[MAX_DIMS];
  void *data; /* 64-byte aligned, so the model reads it without a copy */
  size_t nbytes;
} array_t;

static void *aligned_bytes(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, n ? n : 64) != 0) return NULL;
  return p;
}

/* Reads a little-endian C-order .npy file; returns 0 or prints why not and returns 2. */
static int npy_read(const char *path, array_t *out) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "mmopt-run: error: %s: %s\n", path, strerror(errno));
    return 2;
  }
  unsigned char magic[8];
  int status = 2;
  char *header = NULL;
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0) {
    fprintf(stderr, "mmopt-run: error: %s: not a .npy file\n", path);
    goto done;
  }
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    if (fread(b, 1, 2, f) != 2) goto truncated;
    hlen = (uint32_t)b[0] | ((uint32_t)b[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) goto truncated;
    hlen = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
  } else {
    fprintf(stderr, "mmopt-run: error: %s: unsupported .npy version %d\n", path, magic[6]);
    goto done;
  }
  header = malloc(hlen + 1);
  if (!header || fread(header, 1, hlen, f) != hlen) goto truncated;
  header[hlen] = 0;
  const char *d = strstr(header, "'descr':");
  const char *fo = strstr(header, "'fortran_order':");
  const char *sh = strstr(header, "'shape':");
  if (!d || !fo || !sh) {
    fprintf(stderr, "mmopt-run: error: %s: unreadable .npy header\n", path);
    goto done;
  }
  d = strchr(d + 8, '\'');
  out->dtype = MMOPT_DTYPE_UNKNOWN;
  for (size_t i = 0; d && i < sizeof(NPY_CODES) / sizeof(NPY_CODES[0]); ++i) {
    size_t n = strlen(NPY_CODES[i].descr);
    if (strncmp(d + 1, NPY_CODES[i].descr, n) == 0 && d[1 + n] == '\'') out->dtype = NPY_CODES[i].dtype;
  }
  if (out->dtype == MMOPT_DTYPE_UNKNOWN) {
    fprintf(stderr, "mmopt-run: error: %s: unsupported dtype (little-endian numbers and bool only)\n",
            path);
    goto done;
  }
  if (strncmp(fo + 16 + strspn(fo + 16, " "), "True", 4) == 0) {
    fprintf(stderr, "mmopt-run: error: %s: Fortran-order arrays are not supported\n", path);
    goto done;
  }
  const char *p = strchr(sh, '(');
  out->ndim = 0;
  size_t count = 1;
  if (!p) goto bad_shape;
  ++p;
  for (;;) {
    while (*p == ' ' || *p == ',') ++p;
    if (*p == ')') break;
    char *end;
    long long v = strtoll(p, &end, 10);
    if (end == p || v < 0 || out->ndim >= MAX_DIMS) goto bad_shape;
    out->shape[out->ndim++] = v;
    count *= (size_t)v;
    p = end;
  }
  out->nbytes = count * mmopt_dtype_size(out->dtype);
  out->data = aligned_bytes(out->nbytes);
  if (!out->data) {
    fprintf(stderr, "mmopt-run: error: %s: out of memory\n", path);
    goto done;
  }
  if (fread(out->data, 1, out->nbytes, f) != out->nbytes) goto truncated;
  status = 0;
  goto done;
bad_shape:
  fprintf(stderr, "mmopt-run: error: %s: unreadable shape in the .npy header\n", path);
  goto done;
truncated:
  fprintf(stderr, "mmopt-run: error: %s: truncated .npy file\n", path);
done:
  free(header);
  fclose(f);
  return status;
}

static int npy_write(const char *path, mmopt_dtype dtype, int32_t ndim, const int64_t *shape,
                     const void *data, size_t nbytes) {
  char dict[1024];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                   npy_descr(dtype));
  for (int32_t i = 0; i < ndim && n < 900; ++i) {
    n += snprintf(dict + n, sizeof dict - n, "%lld%s", (long long)shape[i],
                  ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
  }
  n += snprintf(dict + n, sizeof dict - n, "), }");
  /* magic(6) + version(2) + length(2) + dict + padding + '\n' is a multiple of 64 */
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  FILE *f = fopen(path, "wb");
  if (!f) {
    fprintf(stderr, "mmopt-run: error: %s: %s\n", path, strerror(errno));
    return 2;
  }
  uint16_t hlen = (uint16_t)(n + pad + 1);
  unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                            (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
  int ok = fwrite(head, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
  for (size_t i = 0; ok && i < pad; ++i) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF && fwrite(data, 1, nbytes, f) == nbytes;
  ok = (fclose(f) == 0) && ok;
  if (!ok) {
    fprintf(stderr, "mmopt-run: error: %s: write failed\n", path);
    return 2;
  }
  return 0;
}

/* ------------------------------------------------------------------------------------------- */
/* helpers */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void shape_text(const int64_t *shape, int32_t ndim, char *buf, size_t size) {
  size_t n = (size_t)snprintf(buf, size, "[");
  for (int32_t i = 0; i < ndim && n < size; ++i) {
    n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
  }
  if (n < size) snprintf(buf + n, size - n, "]");
}

/* The shape of input / output `index` as the model describes it: sizes, the names of symbolic
 * dims, and ? for an output size the description does not name ("[batch, 3, h, w]"). */
static void axes_text(mmopt_model *model, int output, int index, const mmopt_tensor_info *t,
                      char *buf, size_t size) {
  const int32_t *dims = NULL;
  (output ? mmopt_model_output_dims : mmopt_model_input_dims)(model, index, &dims);
  size_t n = (size_t)snprintf(buf, size, "[");
  for (int32_t i = 0; i < t->ndim && n < size; ++i) {
    mmopt_dim_info d;
    const char *sep = i ? ", " : "";
    if (t->shape[i] >= 0) {
      n += (size_t)snprintf(buf + n, size - n, "%s%lld", sep, (long long)t->shape[i]);
    } else if (dims && dims[i] >= 0 && mmopt_model_dim_info(model, dims[i], &d) == MMOPT_OK) {
      n += (size_t)snprintf(buf + n, size - n, "%s%s", sep, d.name);
    } else {
      n += (size_t)snprintf(buf + n, size - n, "%s?", sep);
    }
  }
  if (n < size) snprintf(buf + n, size - n, "]");
}

/* "1,3,16,16": the smallest shape input `index` takes (each symbolic dim at its minimum). */
static void smallest_shape(mmopt_model *model, int index, const mmopt_tensor_info *t, char *buf,
                           size_t size) {
  const int32_t *dims = NULL;
  mmopt_model_input_dims(model, index, &dims);
  size_t n = 0;
  buf[0] = 0;
  for (int32_t i = 0; i < t->ndim && n < size; ++i) {
    mmopt_dim_info d;
    long long v = (long long)t->shape[i];
    if (v < 0 && dims && dims[i] >= 0 && mmopt_model_dim_info(model, dims[i], &d) == MMOPT_OK) {
      v = (long long)d.min;
    }
    n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? "," : "", v);
  }
}

/* The model shipped in the bundle: <dir of this binary>/../model/<the only *.json>. */
static int bundle_model(char *out, size_t size) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return -1;
  exe[n] = 0;
  char *slash = strrchr(exe, '/');
  if (!slash) return -1;
  *slash = 0;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/../model", exe);
  DIR *dp = opendir(dir);
  if (!dp) return -1;
  struct dirent *e;
  int found = 0;
  while ((e = readdir(dp)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len > 5 && strcmp(e->d_name + len - 5, ".json") == 0) {
      if (++found == 1) snprintf(out, size, "%s/%s", dir, e->d_name);
    }
  }
  closedir(dp);
  return found == 1 ? 0 : -1;
}

static void print_stats(const char *name, mmopt_dtype dtype, const void *data, size_t nbytes) {
  size_t n = nbytes / (mmopt_dtype_size(dtype) ? mmopt_dtype_size(dtype) : 1);
  if (n == 0) return;
  double lo = 0, hi = 0, sum = 0;
  for (size_t i = 0; i < n; ++i) {
    double v;
    switch (dtype) {
      case MMOPT_FLOAT32: v = ((const float *)data)[i]; break;
      case MMOPT_FLOAT64: v = ((const double *)data)[i]; break;
      case MMOPT_INT8: v = ((const int8_t *)data)[i]; break;
      case MMOPT_UINT8: case MMOPT_BOOL: v = ((const uint8_t *)data)[i]; break;
      case MMOPT_INT32: v = ((const int32_t *)data)[i]; break;
      case MMOPT_INT64: v = (double)((const int64_t *)data)[i]; break;
      default: return;
    }
    if (i == 0 || v < lo) lo = v;
    if (i == 0 || v > hi) hi = v;
    sum += v;
  }
  printf("  %s: min %.6g max %.6g mean %.6g\n", name, lo, hi, sum / (double)n);
}

/* ------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  const char *model_path = NULL;
  const char *out_dir = NULL;
  const char *input_args[256];
  int num_input_args = 0;
  const char *shape_args[256];
  int num_shape_args = 0;
  long bench = 0, warmup = 3, threads = 0;
  int info_only = 0;
  for (int i = 1; i < argc; ++i) {
    const char *a = argv[i];
    int has_value = i + 1 < argc;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if ((!strcmp(a, "-i") || !strcmp(a, "--input")) && has_value) {
      if (num_input_args == 256) { fprintf(stderr, "mmopt-run: error: too many inputs\n"); return 2; }
      input_args[num_input_args++] = argv[++i];
    } else if (!strcmp(a, "--shape") && has_value) {
      if (num_shape_args == 256) { fprintf(stderr, "mmopt-run: error: too many --shape\n"); return 2; }
      shape_args[num_shape_args++] = argv[++i];
    } else if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && has_value) {
      out_dir = argv[++i];
    } else if (!strcmp(a, "--bench") && has_value) {
      bench = strtol(argv[++i], NULL, 10);
    } else if (!strcmp(a, "--warmup") && has_value) {
      warmup = strtol(argv[++i], NULL, 10);
    } else if (!strcmp(a, "--threads") && has_value) {
      threads = strtol(argv[++i], NULL, 10);
      if (threads < 1) { fprintf(stderr, "mmopt-run: error: --threads must be >= 1\n"); return 2; }
    } else if (!strcmp(a, "--info")) {
      info_only = 1;
    } else if (a[0] != '-' && !model_path) {
      model_path = a;
    } else {
      fprintf(stderr, "mmopt-run: error: unexpected argument %s\n", a);
      usage(stderr);
      return 2;
    }
  }
  char found[4400];
  if (!model_path) {
    if (bundle_model(found, sizeof found) != 0) {
      fprintf(stderr, "mmopt-run: error: no MODEL given and no single model in the bundle's "
                      "model/ folder\n");
      return 2;
    }
    model_path = found;
  }
  if (threads > 0 && mmopt_set_num_threads((int)threads) != MMOPT_OK) return fail_model("threads");

  mmopt_model *model = NULL;
  if (mmopt_model_open(model_path, &model) != MMOPT_OK) return fail_model("open");
  int n_in = mmopt_model_num_inputs(model), n_out = mmopt_model_num_outputs(model);
  char shape[512];
  if (info_only) {
    printf("%s\n", mmopt_runtime_version());
    for (int k = 0; k < 2; ++k) {
      for (int i = 0; i < (k ? n_out : n_in); ++i) {
        mmopt_tensor_info t;
        (k ? mmopt_model_output_info : mmopt_model_input_info)(model, i, &t);
        axes_text(model, k, i, &t, shape, sizeof shape);
        printf("%-6s %s %s%s\n", k ? "output" : "input", t.name, t.dtype_name, shape);
      }
    }
    int n_dims = mmopt_model_num_dims(model);
    for (int d = 0; d < n_dims; ++d) {
      mmopt_dim_info dim;
      mmopt_model_dim_info(model, d, &dim);
      printf("dim    %s %lld..%lld", dim.name, (long long)dim.min, (long long)dim.max);
      if (dim.multiple > 1) printf(" in steps of %lld", (long long)dim.multiple);
      printf("\n");
    }
    for (int b = 0; b < mmopt_model_num_buckets(model); ++b) {
      const char *function;
      const int64_t *sizes;
      mmopt_model_bucket_info(model, b, &function, &sizes);
      printf("bucket %s", function);
      for (int d = 0; d < n_dims; ++d) {
        mmopt_dim_info dim;
        mmopt_model_dim_info(model, d, &dim);
        if (sizes[d] >= 0) printf(" %s=%lld", dim.name, (long long)sizes[d]);
      }
      printf("\n");
    }
    mmopt_model_close(model);
    return 0;
  }

  int status = 0;
  void **buffers = calloc((size_t)n_in + 1, sizeof(void *));
  char *given = calloc((size_t)n_in + 1, 1);
  for (int k = 0; k < num_input_args && status == 0; ++k) {
    char arg[4096];
    snprintf(arg, sizeof arg, "%s", input_args[k]);
    char *eq = strchr(arg, '=');
    const char *name, *file;
    mmopt_tensor_info t;
    if (eq) {
      *eq = 0;
      name = arg;
      file = eq + 1;
    } else if (n_in == 1) {
      mmopt_model_input_info(model, 0, &t);
      name = t.name;
      file = arg;
    } else {
      fprintf(stderr, "mmopt-run: error: -i %s: expected NAME=FILE.npy (the model has %d inputs)\n",
              arg, n_in);
      status = 2;
      break;
    }
    int index;
    if (mmopt_model_find_input(model, name, &index) != MMOPT_OK) {
      status = fail_model("-i");
      break;
    }
    array_t a;
    memset(&a, 0, sizeof a);
    if ((status = npy_read(file, &a)) != 0) break;
    buffers[index] = a.data;
    given[index] = 1;
    if (mmopt_model_set_input(model, name, a.data, a.dtype, a.ndim, a.shape) != MMOPT_OK) {
      status = fail_model(NULL); /* "input NAME: ..." */
    }
  }
  /* --shape NAME=D1,D2,...: the shape of zeros for an input not given with -i */
  int64_t (*zero_shapes)[MAX_DIMS] = calloc((size_t)n_in + 1, sizeof *zero_shapes);
  int32_t *zero_ndim = calloc((size_t)n_in + 1, sizeof(int32_t));
  char *has_shape = calloc((size_t)n_in + 1, 1);
  for (int k = 0; k < num_shape_args && status == 0; ++k) {
    char arg[4096];
    snprintf(arg, sizeof arg, "%s", shape_args[k]);
    char *eq = strchr(arg, '=');
    if (!eq) {
      fprintf(stderr, "mmopt-run: error: --shape %s: expected NAME=D1,D2,... (e.g. "
                      "x=1,3,640,640)\n", arg);
      status = 2;
      break;
    }
    *eq = 0;
    int index;
    if (mmopt_model_find_input(model, arg, &index) != MMOPT_OK) {
      status = fail_model("--shape");
      break;
    }
    if (given[index]) {
      fprintf(stderr, "mmopt-run: error: --shape %s: the input is given with -i (its array has a "
                      "shape)\n", arg);
      status = 2;
      break;
    }
    int32_t nd = 0;
    const char *p = eq + 1;
    while (status == 0 && *p) {
      char *end;
      long long v = strtoll(p, &end, 10);
      if (end == p || v < 0 || nd >= MAX_DIMS || (*end && *end != ',')) {
        fprintf(stderr, "mmopt-run: error: --shape %s=%s: expected sizes separated by commas\n",
                arg, eq + 1);
        status = 2;
        break;
      }
      zero_shapes[index][nd++] = v;
      p = *end ? end + 1 : end;
    }
    zero_ndim[index] = nd;
    has_shape[index] = 1;
  }
  for (int i = 0; i < n_in && status == 0; ++i) {
    if (given[i]) continue;
    mmopt_tensor_info t;
    mmopt_model_input_info(model, i, &t);
    if (!has_shape[i]) {
      int symbolic = 0;
      for (int32_t d = 0; d < t.ndim; ++d) symbolic |= t.shape[d] < 0;
      if (symbolic) {
        char example[512];
        axes_text(model, 0, i, &t, shape, sizeof shape);
        smallest_shape(model, i, &t, example, sizeof example);
        fprintf(stderr, "mmopt-run: error: input %s not given: its shape %s has symbolic dims; "
                        "give it with -i %s=FILE.npy or --shape %s=%s (--info lists the "
                        "ranges)\n", t.name, shape, t.name, t.name, example);
        status = 2;
        break;
      }
      zero_ndim[i] = t.ndim;
      for (int32_t d = 0; d < t.ndim; ++d) zero_shapes[i][d] = t.shape[d];
    }
    size_t nbytes = mmopt_dtype_size(t.dtype);
    for (int32_t d = 0; d < zero_ndim[i]; ++d) nbytes *= (size_t)zero_shapes[i][d];
    if (!has_shape[i]) fprintf(stderr, "mmopt-run: warning: input %s not given: zeros\n", t.name);
    buffers[i] = aligned_bytes(nbytes);
    if (!buffers[i]) { fprintf(stderr, "mmopt-run: error: out of memory\n"); status = 1; break; }
    memset(buffers[i], 0, nbytes);
    if (mmopt_model_set_input(model, t.name, buffers[i], t.dtype, zero_ndim[i], zero_shapes[i]) !=
        MMOPT_OK) {
      status = fail_model(NULL);
    }
  }
  free(zero_shapes);
  free(zero_ndim);
  free(has_shape);

  if (status == 0) {
    int run = mmopt_model_run(model);
    /* inputs disagreeing on a dim: "input NAME: dim ..." like the other shape errors */
    if (run != MMOPT_OK) status = fail_model(run == MMOPT_ERROR_MISMATCH ? NULL : "run");
  }

  if (status == 0 && bench > 0) {
    for (long i = 0; i < warmup && status == 0; ++i) {
      if (mmopt_model_run(model) != MMOPT_OK) status = fail_model("run");
    }
    double *ms = calloc((size_t)bench, sizeof(double));
    double sum = 0;
    for (long i = 0; i < bench && status == 0; ++i) {
      double t0 = now_ms();
      if (mmopt_model_run(model) != MMOPT_OK) status = fail_model("run");
      ms[i] = now_ms() - t0;
      sum += ms[i];
    }
    if (status == 0) {
      qsort(ms, (size_t)bench, sizeof(double), cmp_double);
      double median = bench % 2 ? ms[bench / 2] : 0.5 * (ms[bench / 2 - 1] + ms[bench / 2]);
      struct rusage ru;
      getrusage(RUSAGE_SELF, &ru);
      char th[32];
      if (threads > 0) snprintf(th, sizeof th, "%ld", threads);
      else snprintf(th, sizeof th, "default");
      printf("bench: %ld runs (after %ld warm-up), threads %s: min %.3f ms, median %.3f ms, "
             "mean %.3f ms; peak RSS %.1f MB\n",
             bench, warmup, th, ms[0], median, sum / (double)bench, (double)ru.ru_maxrss / 1024.0);
    }
    free(ms);
  }

  if (status == 0 && out_dir) {
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
      fprintf(stderr, "mmopt-run: error: %s: %s\n", out_dir, strerror(errno));
      status = 2;
    }
  }
  const char *function = NULL;
  if (status == 0 && mmopt_model_num_dims(model) > 0 &&
      mmopt_model_last_function(model, &function) == MMOPT_OK) {
    printf("function\t%s\n", function); /* the dynamic kernels (main) or a bucket's function */
  }
  for (int i = 0; i < n_out && status == 0; ++i) {
    mmopt_tensor_info t;
    const void *data;
    size_t nbytes;
    mmopt_model_output_info(model, i, &t);
    if (mmopt_model_output(model, i, &data, &nbytes) != MMOPT_OK ||
        mmopt_model_output_shape(model, i, &t.ndim, &t.shape) != MMOPT_OK) {
      status = fail_model("output");
      break;
    }
    t.nbytes = nbytes; /* t now describes this run's output */
    if (out_dir) {
      char file[4096];
      int n = snprintf(file, sizeof file, "%s/", out_dir);
      for (const char *c = t.name; *c && n < (int)sizeof file - 8; ++c) {
        int ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                 *c == '.' || *c == '_' || *c == '-';
        file[n++] = ok ? *c : '_';
      }
      snprintf(file + n, sizeof file - (size_t)n, ".npy");
      if (npy_descr(t.dtype) == NULL) {
        fprintf(stderr, "mmopt-run: error: output %s: %s cannot be written as .npy\n", t.name,
                t.dtype_name);
        status = 2;
        break;
      }
      status = npy_write(file, t.dtype, t.ndim, t.shape, data, nbytes);
      if (status == 0) printf("wrote\t%s\t%s\n", t.name, file);
    } else if (bench == 0) {
      shape_text(t.shape, t.ndim, shape, sizeof shape);
      printf("output %s %s%s\n", t.name, t.dtype_name, shape);
      print_stats(t.name, t.dtype, data, nbytes);
    }
  }

  mmopt_model_close(model);
  for (int i = 0; i < n_in; ++i) free(buffers[i]);
  free(buffers);
  free(given);
  return status;
}

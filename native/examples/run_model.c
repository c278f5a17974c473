/*
 * run_model.c: the smallest program that runs an mmopt model through the C API.
 *
 *   ./run_model ../model/NAME          # NAME, NAME.so or NAME.json
 *
 * It lists the model's inputs and outputs, fills every input with a constant, runs the model once
 * and prints the first values of each output. A model with symbolic dims (compiled with --dim)
 * runs at the smallest size of each dim here; give your data's sizes instead. Build it with the Makefile or CMakeLists.txt next to
 * this file (see docs/deploy.md); replace the constant fill with your own data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmopt_model.h"

static void fill(void *data, mmopt_dtype dtype, size_t nbytes) {
  size_t n = nbytes / mmopt_dtype_size(dtype);
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case MMOPT_FLOAT32: ((float *)data)[i] = 0.5f; break;
      case MMOPT_INT64: ((long long *)data)[i] = 1; break;
      default: memset(data, 1, nbytes); return;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL\n", argv[0]);
    return 2;
  }
  mmopt_model *model = NULL;
  if (mmopt_model_open(argv[1], &model) != MMOPT_OK) {
    fprintf(stderr, "open failed: %s\n", mmopt_last_error());
    return 1;
  }
  int n_in = mmopt_model_num_inputs(model);
  void **buffers = calloc((size_t)n_in, sizeof(void *));
  int status = 0;
  for (int i = 0; i < n_in && status == 0; ++i) {
    mmopt_tensor_info info;
    const int32_t *dims = NULL;
    mmopt_model_input_info(model, i, &info);
    mmopt_model_input_dims(model, i, &dims);
    int64_t shape[16];
    size_t nbytes = mmopt_dtype_size(info.dtype);
    for (int32_t a = 0; a < info.ndim && a < 16; ++a) {
      shape[a] = info.shape[a];
      if (shape[a] < 0) { /* a symbolic dim: any size in its range */
        mmopt_dim_info dim;
        mmopt_model_dim_info(model, dims[a], &dim);
        shape[a] = dim.min;
      }
      nbytes *= (size_t)shape[a];
    }
    info.nbytes = nbytes;
    printf("input  %s %s (%zu bytes)\n", info.name, info.dtype_name, info.nbytes);
    /* 64-byte aligned memory: the model reads it in place, without a copy */
    size_t size = (info.nbytes + 63) / 64 * 64;
    buffers[i] = aligned_alloc(64, size ? size : 64);
    fill(buffers[i], info.dtype, info.nbytes);
    if (mmopt_model_set_input(model, info.name, buffers[i], info.dtype, info.ndim, shape) !=
        MMOPT_OK) {
      fprintf(stderr, "set_input failed: %s\n", mmopt_last_error());
      status = 1;
    }
  }
  if (status == 0 && mmopt_model_run(model) != MMOPT_OK) {
    fprintf(stderr, "run failed: %s\n", mmopt_last_error());
    status = 1;
  }
  for (int i = 0; status == 0 && i < mmopt_model_num_outputs(model); ++i) {
    mmopt_tensor_info info;
    const void *data;
    size_t nbytes;
    mmopt_model_output_info(model, i, &info);
    mmopt_model_output(model, i, &data, &nbytes);
    printf("output %s %s:", info.name, info.dtype_name);
    if (info.dtype == MMOPT_FLOAT32) {
      for (size_t k = 0; k < nbytes / 4 && k < 5; ++k) printf(" %g", ((const float *)data)[k]);
    }
    printf("\n");
  }
  mmopt_model_close(model); /* the buffers may be freed after the last run or close */
  for (int i = 0; i < n_in; ++i) free(buffers[i]);
  free(buffers);
  return status;
}

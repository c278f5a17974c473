/*
 * mmopt_model.h: run an mmopt artifact (NAME.so + NAME.json) from C or C++, without Python.
 *
 * A plain C API (C99, C++ compatible) over TVM's runtime. Link with -lmmopt_model; the library
 * loads libtvm_runtime.so and libtvm_ffi.so from its own directory.
 *
 *     mmopt_model *m;
 *     if (mmopt_model_open("model/det", &m) != MMOPT_OK) {
 *       fprintf(stderr, "%s\n", mmopt_last_error());
 *       return 1;
 *     }
 *     int64_t shape[4] = {1, 3, 224, 224};
 *     mmopt_model_set_input(m, "x", pixels, MMOPT_FLOAT32, 4, shape);
 *     mmopt_model_run(m);
 *     const void *y; size_t y_bytes;
 *     mmopt_model_output(m, 0, &y, &y_bytes);
 *     mmopt_model_close(m);
 *
 * A model compiled with symbolic dims (`mmopt compile --dim height=320..1280:32`) takes any input
 * shape its dims' ranges allow and reports the shapes of each run's outputs; see DYNAMIC SHAPES
 * below.
 *
 * ERRORS. Every function that returns `int` returns MMOPT_OK (0) on success and a positive
 * mmopt_status on failure; on failure mmopt_last_error() holds a one-line description. No function
 * aborts the process or throws across this API on bad input: missing or truncated files, a library
 * built for another architecture, unknown names, wrong dtypes or shapes are all reported as errors.
 *
 * OWNERSHIP.
 *  - mmopt_model_open() returns a handle the caller owns; mmopt_model_close() frees it (NULL is a
 *    no-op). Every pointer the model hands out (names, shapes, output data) is owned by the model.
 *  - Names, dtype names and shapes in mmopt_tensor_info stay valid until mmopt_model_close().
 *  - mmopt_model_set_input() does NOT copy when `data` is 64-byte aligned (posix_memalign,
 *    aligned_alloc(64, ...)): the model reads the caller's memory during mmopt_model_run(), so that
 *    memory must stay valid and unchanged from set_input until run returns (or until the input is
 *    set again or the model is closed). Unaligned data is copied into a buffer the model owns
 *    (TVM's kernels assume 64-byte aligned tensors); one per input, grown to the largest size set
 *    so far when the model has symbolic dims.
 *  - Output data returned by mmopt_model_output() and output shapes returned by
 *    mmopt_model_output_shape() belong to the model and stay valid until the next
 *    mmopt_model_run() or mmopt_model_close() on that handle; mmopt_model_copy_output() copies the
 *    data into caller memory instead. Dim names, bucket names and sizes, and the per-axis dim
 *    indices stay valid until mmopt_model_close().
 *  - mmopt_last_error() points to thread-local storage, valid until the next failing call in the
 *    same thread.
 *
 * THREAD SAFETY.
 *  - Distinct handles may be used from distinct threads at the same time (open the model once per
 *    thread to run requests in parallel; each calling thread gets its own pool of TVM worker
 *    threads).
 *  - One handle is safe to call from several threads (each call takes the handle's lock), but a
 *    request is a sequence set_input... run, output...: callers sharing one handle must serialize
 *    whole sequences themselves, or outputs of one request may be replaced by another's.
 *  - mmopt_set_num_threads() changes process environment: call it at start-up, before other
 *    threads exist.
 *
 * Version: MMOPT_MODEL_API_VERSION changes when this API changes incompatibly.
 */
#ifndef MMOPT_MODEL_H_
#define MMOPT_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MMOPT_MODEL_API_VERSION 1

#if defined(__GNUC__)
#define MMOPT_API __attribute__((visibility("default")))
#else
#define MMOPT_API
#endif

/*! \brief An opened model (opaque). */
typedef struct mmopt_model mmopt_model;

/*! \brief Return codes: 0 is success, anything else an error (see mmopt_last_error()). */
typedef enum mmopt_status {
  MMOPT_OK = 0,
  MMOPT_ERROR_INVALID_ARGUMENT = 1, /* NULL pointer, index out of range, negative rank */
  MMOPT_ERROR_NOT_FOUND = 2,        /* no such file, no input/output of that name */
  MMOPT_ERROR_LOAD = 3,             /* the library or its description cannot be loaded */
  MMOPT_ERROR_MISMATCH = 4,         /* dtype, rank, shape or buffer size differs from the model */
  MMOPT_ERROR_STATE = 5,            /* an input is not set; outputs read before a run */
  MMOPT_ERROR_RUNTIME = 6           /* TVM's runtime failed while running the model */
} mmopt_status;

/*! \brief Element types (the dtype names of NAME.json, e.g. "float32", in parentheses). */
typedef enum mmopt_dtype {
  MMOPT_DTYPE_UNKNOWN = 0,
  MMOPT_FLOAT32 = 1,  /* float32 */
  MMOPT_FLOAT16 = 2,  /* float16 */
  MMOPT_FLOAT64 = 3,  /* float64 */
  MMOPT_BFLOAT16 = 4, /* bfloat16 */
  MMOPT_INT8 = 5,     /* int8 */
  MMOPT_INT16 = 6,    /* int16 */
  MMOPT_INT32 = 7,    /* int32 */
  MMOPT_INT64 = 8,    /* int64 */
  MMOPT_UINT8 = 9,    /* uint8 */
  MMOPT_UINT16 = 10,  /* uint16 */
  MMOPT_UINT32 = 11,  /* uint32 */
  MMOPT_UINT64 = 12,  /* uint64 */
  MMOPT_BOOL = 13     /* bool (one byte per element) */
} mmopt_dtype;

/*!
 * \brief What an input or output is. All pointers are owned by the model (valid until close).
 *
 * In a model with symbolic dims (compiled with `--dim`) the shape holds
 * -1 on each axis whose size is given at run time, and nbytes is then 0 (DYNAMIC SHAPES below).
 */
typedef struct mmopt_tensor_info {
  const char *name;       /* as in the ONNX model */
  mmopt_dtype dtype;
  const char *dtype_name; /* "float32", ... */
  int32_t ndim;
  const int64_t *shape;   /* ndim entries (NULL when ndim is 0); -1: a symbolic dim */
  size_t nbytes;          /* bytes of one dense tensor: product(shape) * element size; 0 when
                             the shape has a -1 */
} mmopt_tensor_info;

/*! \brief A symbolic dim of the model (`--dim NAME=MIN..MAX[:MULTIPLE]`). */
typedef struct mmopt_dim_info {
  const char *name; /* "height"; owned by the model, valid until close */
  int64_t min;      /* the sizes the dim accepts: min..max, multiples of `multiple` (1: any) */
  int64_t max;
  int64_t multiple;
} mmopt_dim_info;

/*! \brief "mmopt-model API 1 (TVM 0.27.0.post1 runtime)": what this library is. */
MMOPT_API const char *mmopt_runtime_version(void);

/*! \brief The last error of the calling thread ("" when none). */
MMOPT_API const char *mmopt_last_error(void);

/*! \brief Size in bytes of one element of `dtype` (0 for MMOPT_DTYPE_UNKNOWN). */
MMOPT_API size_t mmopt_dtype_size(mmopt_dtype dtype);

/*!
 * \brief Number of worker threads TVM's kernels use (sets TVM_NUM_THREADS; default: one per
 * physical core this process may run on, unless TVM_NUM_THREADS or OMP_NUM_THREADS is set).
 * Takes effect in threads that have not yet run a model: call it before the first
 * mmopt_model_run(). n must be >= 1.
 */
MMOPT_API int mmopt_set_num_threads(int n);

/*!
 * \brief Open an artifact: `path` is NAME, NAME.so or NAME.json (both files must exist side by
 * side). On success *out is a new handle (close it with mmopt_model_close()); on failure *out is
 * NULL.
 */
MMOPT_API int mmopt_model_open(const char *path, mmopt_model **out);

/*! \brief Free a model and everything it handed out. NULL is a no-op. */
MMOPT_API void mmopt_model_close(mmopt_model *model);

/*! \brief Number of inputs / outputs, or -1 (with an error) when model is NULL. */
MMOPT_API int mmopt_model_num_inputs(const mmopt_model *model);
MMOPT_API int mmopt_model_num_outputs(const mmopt_model *model);

/*! \brief Describe input / output `index` (0-based, in call order). */
MMOPT_API int mmopt_model_input_info(const mmopt_model *model, int index, mmopt_tensor_info *info);
MMOPT_API int mmopt_model_output_info(const mmopt_model *model, int index, mmopt_tensor_info *info);

/*! \brief Index of the input / output called `name` (MMOPT_ERROR_NOT_FOUND when there is none). */
MMOPT_API int mmopt_model_find_input(const mmopt_model *model, const char *name, int *index);
MMOPT_API int mmopt_model_find_output(const mmopt_model *model, const char *name, int *index);

/*!
 * \brief Set input `name` from caller memory: a dense row-major tensor of `dtype` and `shape`
 * (`ndim` entries), which must equal the model's; with symbolic dims, any shape the dims' ranges
 * allow (MMOPT_ERROR_MISMATCH otherwise, naming the input and the dim). No copy when `data` is
 * 64-byte aligned (see OWNERSHIP above).
 */
MMOPT_API int mmopt_model_set_input(mmopt_model *model, const char *name, const void *data,
                                    mmopt_dtype dtype, int32_t ndim, const int64_t *shape);

/*!
 * \brief Run the model on the inputs set (every input must have been set at least once). With
 * symbolic dims, the inputs' sizes are bound together first: inputs disagreeing on a dim they
 * share fail with MMOPT_ERROR_MISMATCH (naming the later input), before anything runs.
 */
MMOPT_API int mmopt_model_run(mmopt_model *model);

/*!
 * \brief Output `index` of the last run: *data points to its dense row-major elements (owned by the
 * model, valid until the next run or close), *nbytes is their size. Either pointer may be NULL.
 */
MMOPT_API int mmopt_model_output(mmopt_model *model, int index, const void **data, size_t *nbytes);

/*! \brief Copy output `index` of the last run into `dst` (`capacity` bytes, at least its size). */
MMOPT_API int mmopt_model_copy_output(mmopt_model *model, int index, void *dst, size_t capacity);

/*
 * DYNAMIC SHAPES. A model compiled with symbolic dims (`mmopt compile --dim height=320..1280:32`)
 * takes inputs of any size in the dims' ranges; the functions below describe the dims and read the
 * shapes of the last run. They were added to API version 1 without changing what was there
 * (programs written for static shapes are unaffected; a model without symbolic dims has 0 dims and
 * 0 buckets). Sizes are checked as mmopt's Python runtime checks them, with the same one-line
 * messages ("input images: dim 2 (height) is 1312, outside the compiled range 320..1280"): a wrong
 * rank, a fixed dim that differs, a size outside the range or not a multiple at
 * mmopt_model_set_input(); two inputs disagreeing on a dim at mmopt_model_run(). Sizes that are
 * exactly a bucket's (`--buckets`) run the bucket's statically specialized function, any other
 * sizes the dynamic kernels.
 */

/*!
 * \brief The shape of output `index` of the last run: *ndim axes at *shape (owned by the model,
 * valid until the next run or close). The sizes of symbolic dims are concrete here.
 */
MMOPT_API int mmopt_model_output_shape(mmopt_model *model, int index, int32_t *ndim,
                                       const int64_t **shape);

/*! \brief Number of symbolic dims (0: static shapes), or -1 (with an error) when model is NULL. */
MMOPT_API int mmopt_model_num_dims(const mmopt_model *model);

/*! \brief Describe symbolic dim `index` (0-based, in the order of NAME.json's "dims"). */
MMOPT_API int mmopt_model_dim_info(const mmopt_model *model, int index, mmopt_dim_info *info);

/*!
 * \brief Which dim each axis of input / output `index` is: *dims points to ndim entries (owned by
 * the model, valid until close; NULL when ndim is 0), each the index of a symbolic dim
 * (mmopt_model_dim_info) or -1 for a fixed axis (and for an output axis whose size the model's
 * description does not name).
 */
MMOPT_API int mmopt_model_input_dims(const mmopt_model *model, int index, const int32_t **dims);
MMOPT_API int mmopt_model_output_dims(const mmopt_model *model, int index, const int32_t **dims);

/*! \brief Number of buckets (statically specialized functions), or -1 when model is NULL. */
MMOPT_API int mmopt_model_num_buckets(const mmopt_model *model);

/*!
 * \brief Bucket `index`: *function is its function's name ("main_bucket0"), *sizes has one entry
 * per symbolic dim (mmopt_model_num_dims(), in dim order): the size the bucket is specialized for.
 * Both owned by the model, valid until close; either pointer may be NULL.
 */
MMOPT_API int mmopt_model_bucket_info(const mmopt_model *model, int index, const char **function,
                                      const int64_t **sizes);

/*!
 * \brief The compiled function the last run called: "main" (for a model with symbolic dims: the
 * dynamic kernels) or a bucket's function. *name is owned by the model, valid until close.
 */
MMOPT_API int mmopt_model_last_function(mmopt_model *model, const char **name);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MMOPT_MODEL_H_ */

/* The OpenCL compile driver: device enumeration and selection, OpenCL C source -> program
 * (with its build log and binary), and program creation from such a binary (the disk
 * cache's warm path).
 *
 * The ICD loader libOpenCL.so.1 is never linked: it is opened with dlopen the first time
 * any function here needs it (once per process, pthread_once) and its entry points are
 * resolved into a function table (aj_opencl_api()), which the OpenCL backend uses too. So
 * a machine without OpenCL gets ADAMJIT_ERR_BACKEND_UNAVAILABLE with the loader's reason
 * instead of a library that fails to start.
 *
 * Build dependency: the Khronos headers <CL/cl.h> (Debian opencl-c-headers, installed by
 * scripts/install-deps.sh). They are only used for types and constants; we target the
 * OpenCL 1.2 API, which every ICD loader and driver (PoCL, NVIDIA, AMD, Intel) exports.
 *
 * Library search: $ADAMJIT_OPENCL_LIBRARY when set and non-empty (a full path or a soname;
 * then nothing else is tried, so a mistyped override is reported rather than silently
 * replaced; ignored in set-uid programs), otherwise libOpenCL.so.1 then libOpenCL.so. It
 * stays loaded for the life of the process.
 *
 * Devices are numbered as one flat list: platforms in the loader's order, and within a
 * platform its devices of every type in the driver's order.
 *
 * Internal (not installed). The loader is thread-safe; an aj_cl_device and the programs
 * built on it must be used by one thread at a time (like the context they report to).
 */
#ifndef ADAMJIT_JIT_OPENCL_H
#define ADAMJIT_JIT_OPENCL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>
#include <stddef.h>

#include "adamjit/adamjit.h"

/* X(name): every entry point of the table, each typed from its declaration in <CL/cl.h>.
 * All are OpenCL 1.0/1.2 core functions, so a loader lacking one is not an OpenCL loader. */
#define AJ_OPENCL_FUNCS(X)      \
  X(clGetPlatformIDs)           \
  X(clGetPlatformInfo)          \
  X(clGetDeviceIDs)             \
  X(clGetDeviceInfo)            \
  X(clCreateContext)            \
  X(clReleaseContext)           \
  X(clCreateCommandQueue)       \
  X(clReleaseCommandQueue)      \
  X(clCreateProgramWithSource)  \
  X(clCreateProgramWithBinary)  \
  X(clBuildProgram)             \
  X(clGetProgramBuildInfo)      \
  X(clGetProgramInfo)           \
  X(clReleaseProgram)           \
  X(clCreateKernel)             \
  X(clReleaseKernel)            \
  X(clSetKernelArg)             \
  X(clEnqueueNDRangeKernel)     \
  X(clCreateBuffer)             \
  X(clCreateSubBuffer)          \
  X(clReleaseMemObject)         \
  X(clEnqueueReadBuffer)        \
  X(clEnqueueWriteBuffer)       \
  X(clFinish)                   \
  X(clFlush)                    \
  X(clEnqueueFillBuffer)        \
  X(clEnqueueCopyBuffer)        \
  X(clGetMemObjectInfo)         \
  X(clGetCommandQueueInfo)      \
  X(clRetainCommandQueue)       \
  X(clRetainContext)            \
  X(clGetKernelWorkGroupInfo)

#define AJ_OPENCL_MEMBER(name) __typeof__(name)* name;
typedef struct aj_opencl_api_table {
  AJ_OPENCL_FUNCS(AJ_OPENCL_MEMBER)
} aj_opencl_api_table;
#undef AJ_OPENCL_MEMBER

/* ADAMJIT_OK when the loader opened and exported everything; otherwise
 * ADAMJIT_ERR_BACKEND_UNAVAILABLE with the reason copied to why[why_size] (may be NULL)
 * and to adamjit_last_error(). Says nothing about devices: see aj_opencl_device_list. */
adamjit_status aj_opencl_available(char* why, size_t why_size);

/* The function table, or NULL when the loader is unavailable. */
const aj_opencl_api_table* aj_opencl_api(void);

/* The library name or path that was loaded; NULL when unavailable. */
const char* aj_opencl_library(void);

/* The name of an OpenCL error code ("CL_BUILD_PROGRAM_FAILURE"); "CL_UNKNOWN_ERROR" for
 * codes the table lacks. Static, never NULL. */
const char* aj_opencl_error_name(cl_int code);

/* The status an OpenCL error code means: CL_SUCCESS -> ADAMJIT_OK; CL_OUT_OF_RESOURCES,
 * CL_MEM_OBJECT_ALLOCATION_FAILURE, CL_OUT_OF_HOST_MEMORY -> ADAMJIT_ERR_OUT_OF_MEMORY;
 * CL_BUILD_PROGRAM_FAILURE, CL_COMPILE_PROGRAM_FAILURE, CL_LINK_PROGRAM_FAILURE ->
 * ADAMJIT_ERR_COMPILE; everything else -> ADAMJIT_ERR_DRIVER. */
adamjit_status aj_opencl_status(cl_int code);

/* ADAMJIT_OK for CL_SUCCESS; otherwise records "<what>: <NAME> (<code>)" in ctx (or the
 * thread's message when ctx is NULL) and returns aj_opencl_status(code). For the backend's
 * own calls: `if ((st = aj_opencl_check(ctx, err, "clEnqueueNDRangeKernel"))) ...`. */
adamjit_status aj_opencl_check(adamjit_context* ctx, cl_int code, const char* what);

#define AJ_CL_STR_LEN 256

typedef struct aj_cl_device_info {
  int index;                          /* in the flat list */
  char name[AJ_CL_STR_LEN];           /* CL_DEVICE_NAME; strings are truncated to fit */
  char vendor[AJ_CL_STR_LEN];         /* CL_DEVICE_VENDOR */
  char platform[AJ_CL_STR_LEN];       /* CL_PLATFORM_NAME */
  char version[AJ_CL_STR_LEN];        /* CL_DEVICE_VERSION ("OpenCL 3.0 PoCL ...") */
  char driver_version[AJ_CL_STR_LEN]; /* CL_DRIVER_VERSION: part of every kernel cache key */
  char c_version[AJ_CL_STR_LEN];      /* CL_DEVICE_OPENCL_C_VERSION */
  cl_device_type type;                /* CL_DEVICE_TYPE_GPU, _CPU, ... */
  cl_uint compute_units;
  size_t max_work_group_size;
  cl_ulong global_mem_size;
  int has_fp16; /* cl_khr_fp16: half arithmetic; without it kernels use vload_half/vstore_half */
} aj_cl_device_info;

/* Enumerates every device of every platform. Copies up to `cap` entries into out (may be
 * NULL when cap is 0) and sets *count to the total. ADAMJIT_ERR_BACKEND_UNAVAILABLE when
 * the loader is missing or no platform has a device (with the reason); ctx may be NULL. */
adamjit_status aj_opencl_device_list(adamjit_context* ctx, aj_cl_device_info* out, int cap, int* count);

/* An opened device: its ids, an OpenCL context holding only it, and one in-order command
 * queue. Created by aj_opencl_device_open, released by aj_opencl_device_close. */
typedef struct aj_cl_device {
  cl_platform_id platform;
  cl_device_id device;
  cl_context context;
  cl_command_queue queue;
  aj_cl_device_info info;
} aj_cl_device;

/* Opens the device that `selector` names:
 *  - a decimal number: that index in the flat list (ADAMJIT_ERR_INVALID_INDEX if out of range);
 *  - any other text: the first device whose name, vendor or platform name contains it,
 *    ignoring case (ADAMJIT_ERR_INVALID_VALUE if none; the message lists the devices);
 *  - NULL or "": $ADAMJIT_OPENCL_DEVICE when set and non-empty (read as above), else 0.
 * *out is NULL after a failure. Errors also: ADAMJIT_ERR_NULL_ARGUMENT,
 * ADAMJIT_ERR_BACKEND_UNAVAILABLE, ADAMJIT_ERR_OUT_OF_MEMORY, ADAMJIT_ERR_DRIVER. */
adamjit_status aj_opencl_device_open(adamjit_context* ctx, const char* selector, aj_cl_device** out);

/* Wraps the caller's command queue (a cl_command_queue) so that everything runs on it: the
 * device and context are the queue's; both queue and context are retained (and released by
 * aj_opencl_device_close). An out-of-order queue is refused (ADAMJIT_ERR_INVALID_VALUE):
 * the library orders a step's kernels by queue order alone. */
adamjit_status aj_opencl_device_wrap(adamjit_context* ctx, cl_command_queue queue, aj_cl_device** out);

/* Releases the queue (after waiting for it), the context and the struct. NULL-safe. */
void aj_opencl_device_close(aj_cl_device* dev);

typedef struct aj_cl_program {
  cl_program program; /* built for the one device; NULL after a failure */
  /* malloc'd NUL-terminated build log ("" when the driver says nothing). Kept after
   * ADAMJIT_ERR_COMPILE too (all of it; the context message holds a truncated copy).
   * The driver's "<source>" file name is replaced by the program name. */
  char* log;
  /* malloc'd device binary (CL_PROGRAM_BINARIES) of binary_size bytes, for the disk
   * cache; NULL when the build failed or the driver gave none. */
  unsigned char* binary;
  size_t binary_size;
} aj_cl_program;

/* Builds `source` (OpenCL C) for dev with `options` (clBuildProgram's option string; NULL
 * for none). program_name names the program in the log and the messages: use the kernel
 * and variant, e.g. "adamw32_f32.cl" (the log then reads "adamw32_f32.cl:12:5: error: ...").
 *
 * *out is always reset first; aj_opencl_program_free(out) is needed after every call.
 * Errors (detail in the context message, or adamjit_last_error() when ctx is NULL):
 *   ADAMJIT_ERR_NULL_ARGUMENT, ADAMJIT_ERR_BACKEND_UNAVAILABLE, ADAMJIT_ERR_COMPILE (the
 *   message reads "<program_name>: clBuildProgram: CL_BUILD_PROGRAM_FAILURE (-11)" and the
 *   log; CL_INVALID_BUILD_OPTIONS is ADAMJIT_ERR_INVALID_VALUE), ADAMJIT_ERR_OUT_OF_MEMORY,
 *   ADAMJIT_ERR_DRIVER. */
adamjit_status aj_opencl_build(adamjit_context* ctx, aj_cl_device* dev, const char* program_name, const char* source,
                               const char* options, aj_cl_program* out);

/* Creates and builds a program from a binary that aj_opencl_build returned for the same
 * device and driver (the cache key guarantees that). out->binary stays NULL (the caller
 * has it). Any failure, including a binary the driver rejects (ADAMJIT_ERR_DRIVER with
 * CL_INVALID_BINARY), means "compile from source instead". Errors as aj_opencl_build,
 * plus ADAMJIT_ERR_INVALID_SIZE for an empty binary. */
adamjit_status aj_opencl_load_binary(adamjit_context* ctx, aj_cl_device* dev, const char* program_name,
                                     const void* binary, size_t size, const char* options, aj_cl_program* out);

/* Releases the program and frees the log and binary, and resets *p. NULL-safe. */
void aj_opencl_program_free(aj_cl_program* p);

#endif

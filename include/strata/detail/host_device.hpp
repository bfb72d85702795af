#pragma once
// STRATA_HOST_DEVICE marks functions that must be callable from both host and device code, such
// as the functors the fused kernels hand to Thrust: nvcc needs the annotations to compile them for
// the device, and any other compiler must not see them.

#if defined(__CUDACC__)
#define STRATA_HOST_DEVICE __host__ __device__
#else
#define STRATA_HOST_DEVICE
#endif

# Enables the CUDA language for strata's own .cu tests, examples and benchmarks. Sets
# STRATA_CUDA_LANGUAGE to ON when nvcc works. nvcc is also looked for in the toolkit's bin
# directory when it is not on PATH.
include_guard(GLOBAL)

macro(strata_enable_cuda_language)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(STRATA_NVCC nvcc HINTS "${CUDAToolkit_BIN_DIR}" /usr/local/cuda/bin)
    if(STRATA_NVCC)
      set(ENV{CUDACXX} "${STRATA_NVCC}")
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Explicit: "native" needs a GPU at configure time. Machine code for A100 and H100/H200,
      # and compute_90 PTX that newer GPUs compile at load time.
      set(CMAKE_CUDA_ARCHITECTURES 80-real 90-real 90-virtual)
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc's C++20 flag; tell it.
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(STRATA_CUDA_LANGUAGE ON)
  endif()
endmacro()

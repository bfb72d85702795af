# Finds strata's dependencies and wraps each in an imported target strata_deps::<name>. Used by
# the build and by the installed package config alike. Required: Threads, Boost.MP11, Thrust
# (CCCL from the CUDA toolkit, or Debian's libthrust-dev). Optional: cuda, mpi, nccl, torch.
include_guard(GLOBAL)

macro(strata_find_dependencies)
  find_package(Threads REQUIRED)

  if(NOT TARGET strata_deps::mp11)
    find_path(STRATA_MP11_INCLUDE_DIR boost/mp11.hpp DOC "Directory that holds boost/mp11.hpp")
    if(NOT STRATA_MP11_INCLUDE_DIR)
      message(FATAL_ERROR "strata needs Boost.MP11 (Debian: libboost-dev); "
                          "set STRATA_MP11_INCLUDE_DIR to the directory that holds boost/mp11.hpp")
    endif()
    add_library(strata_deps::mp11 INTERFACE IMPORTED GLOBAL)
    set_target_properties(strata_deps::mp11 PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${STRATA_MP11_INCLUDE_DIR}")
  endif()

  if(NOT DEFINED STRATA_ENABLE_CUDA OR STRATA_ENABLE_CUDA)
    if(NOT CUDAToolkit_FOUND)
      find_package(CUDAToolkit QUIET)
    endif()
  endif()

  if(NOT TARGET strata_deps::thrust_host)
    set(_strata_thrust_hints "")
    if(CUDAToolkit_FOUND)
      foreach(_dir IN LISTS CUDAToolkit_INCLUDE_DIRS)
        list(APPEND _strata_thrust_hints "${_dir}/cccl" "${_dir}")
      endforeach()
    endif()
    find_path(STRATA_THRUST_INCLUDE_DIR thrust/version.h
      HINTS ${_strata_thrust_hints}
      PATHS /usr/local/cuda/include/cccl /usr/local/cuda/include
      DOC "Directory that holds thrust/version.h (CCCL or libthrust-dev)")
    if(NOT STRATA_THRUST_INCLUDE_DIR)
      message(FATAL_ERROR "strata needs Thrust (the CUDA toolkit's CCCL, or Debian's libthrust-dev); "
                          "set STRATA_THRUST_INCLUDE_DIR to the directory that holds thrust/version.h")
    endif()
    add_library(strata_deps::thrust_host INTERFACE IMPORTED GLOBAL)
    # Host translation units run Thrust's sequential backend; nvcc keeps its CUDA default.
    set_target_properties(strata_deps::thrust_host PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${STRATA_THRUST_INCLUDE_DIR}"
      INTERFACE_COMPILE_DEFINITIONS
        "$<$<COMPILE_LANGUAGE:CXX>:THRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_CPP>")
  endif()

  if(CUDAToolkit_FOUND AND NOT TARGET strata_deps::cuda)
    add_library(strata_deps::cuda INTERFACE IMPORTED GLOBAL)
    set_target_properties(strata_deps::cuda PROPERTIES
      INTERFACE_LINK_LIBRARIES CUDA::cudart
      # MP11's constexpr functions are host functions; device code calls them at compile time.
      # No --extended-lambda: strata's headers have no device lambdas, and a consumer's own
      # code asks for the flag itself if it has some.
      INTERFACE_COMPILE_OPTIONS "$<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>")
  endif()

  if(CUDAToolkit_FOUND AND NOT TARGET strata_deps::nccl
     AND (NOT DEFINED STRATA_ENABLE_NCCL OR STRATA_ENABLE_NCCL))
    find_path(STRATA_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(STRATA_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
    if(STRATA_NCCL_INCLUDE_DIR AND STRATA_NCCL_LIBRARY)
      add_library(strata_deps::nccl INTERFACE IMPORTED GLOBAL)
      set_target_properties(strata_deps::nccl PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${STRATA_NCCL_INCLUDE_DIR}"
        INTERFACE_LINK_LIBRARIES "${STRATA_NCCL_LIBRARY};CUDA::cudart")
    endif()
  endif()

  if((NOT DEFINED STRATA_ENABLE_MPI OR STRATA_ENABLE_MPI) AND NOT TARGET strata_deps::mpi)
    find_package(MPI QUIET COMPONENTS CXX)
    if(MPI_CXX_FOUND)
      add_library(strata_deps::mpi INTERFACE IMPORTED GLOBAL)
      set_target_properties(strata_deps::mpi PROPERTIES INTERFACE_LINK_LIBRARIES MPI::MPI_CXX)
    endif()
  endif()

  # libtorch (Debian: libtorch-dev; or a pip-installed torch, whose cmake directory
  # torch.utils.cmake_prefix_path names) for strata::torch; gloo's headers (libgloo-dev) add its
  # gloo process groups.
  if((NOT DEFINED STRATA_ENABLE_TORCH OR STRATA_ENABLE_TORCH) AND NOT TARGET strata_deps::torch)
    get_directory_property(_strata_before IMPORTED_TARGETS)
    find_package(Torch CONFIG QUIET)
    if(Torch_FOUND)
      # Torch's imported targets are local to the directory that found them; strata_deps::torch
      # needs them wherever strata is used (a consumer's add_subdirectory), so the targets
      # find_package(Torch) created become global.
      get_directory_property(_strata_after IMPORTED_TARGETS)
      foreach(_strata_t IN LISTS _strata_after)
        if(NOT _strata_t IN_LIST _strata_before)
          get_target_property(_strata_global "${_strata_t}" IMPORTED_GLOBAL)
          if(NOT _strata_global)
            set_target_properties("${_strata_t}" PROPERTIES IMPORTED_GLOBAL TRUE)
          endif()
        endif()
      endforeach()
      add_library(strata_deps::torch INTERFACE IMPORTED GLOBAL)
      set_target_properties(strata_deps::torch PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}"
        INTERFACE_LINK_LIBRARIES "${TORCH_LIBRARIES}")
      find_path(STRATA_GLOO_INCLUDE_DIR gloo/rendezvous/store.h HINTS ${TORCH_INCLUDE_DIRS}
        DOC "Directory that holds gloo/rendezvous/store.h (libgloo-dev)")
      if(STRATA_GLOO_INCLUDE_DIR)
        set_property(TARGET strata_deps::torch APPEND PROPERTY
          INTERFACE_INCLUDE_DIRECTORIES "${STRATA_GLOO_INCLUDE_DIR}")
        set_property(TARGET strata_deps::torch APPEND PROPERTY
          INTERFACE_COMPILE_DEFINITIONS USE_C10D_GLOO)
      endif()
    endif()
  endif()
endmacro()

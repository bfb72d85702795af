# The consumer program, shared by both ways of getting strata. It uses strata::mpi,
# strata::nccl and strata::torch when STRATA_CONSUMER_MPI / _NCCL / _TORCH say that the strata
# under test was built with them: each is then required, compiled against and linked.
add_executable(strata_consumer "${CMAKE_CURRENT_LIST_DIR}/main.cpp")
target_link_libraries(strata_consumer PRIVATE strata::strata)
foreach(component mpi nccl torch)
  string(TOUPPER "${component}" upper)
  if(STRATA_CONSUMER_${upper})
    if(NOT TARGET strata::${component})
      message(FATAL_ERROR "strata was built with strata::${component}, but it is missing here")
    endif()
    target_sources(strata_consumer PRIVATE "${CMAKE_CURRENT_LIST_DIR}/${component}.cpp")
    target_link_libraries(strata_consumer PRIVATE strata::${component})
    target_compile_definitions(strata_consumer PRIVATE STRATA_CONSUMER_${upper})
  endif()
endforeach()

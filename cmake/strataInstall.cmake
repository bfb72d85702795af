# Install rules and the package config that makes find_package(strata CONFIG) work.
include(CMakePackageConfigHelpers)

set(STRATA_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/strata")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS strata EXPORT strataTargets)
install(EXPORT strataTargets NAMESPACE strata:: FILE strata-targets.cmake
        DESTINATION "${STRATA_INSTALL_CMAKEDIR}")

# Each optional target has its own export file, loaded by the config only where its dependency
# is found on the consumer's machine.
foreach(component cuda mpi nccl torch)
  if(TARGET strata_${component})
    install(TARGETS strata_${component} EXPORT strata_${component}Targets)
    install(EXPORT strata_${component}Targets NAMESPACE strata::
            FILE strata-${component}-targets.cmake DESTINATION "${STRATA_INSTALL_CMAKEDIR}")
  endif()
endforeach()

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/strataConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/strataConfig.cmake"
  INSTALL_DESTINATION "${STRATA_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/strataConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES
  "${PROJECT_BINARY_DIR}/strataConfig.cmake"
  "${PROJECT_BINARY_DIR}/strataConfigVersion.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/strataDependencies.cmake"
  DESTINATION "${STRATA_INSTALL_CMAKEDIR}")

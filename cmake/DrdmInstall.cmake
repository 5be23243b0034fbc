# Installable CMake package: find_package(drdm) gives drdm::drdm.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(DRDM_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/drdm)
install(TARGETS drdm EXPORT drdmTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/drdm DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# The shipped models, where drdm_deform looks for its default (share/drdm/models).
install(DIRECTORY models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/drdm/models)
install(EXPORT drdmTargets NAMESPACE drdm:: DESTINATION ${DRDM_INSTALL_CMAKEDIR})

get_target_property(_drdm_type drdm TYPE)
if(_drdm_type STREQUAL "STATIC_LIBRARY")
  set(DRDM_NEEDS_ITK ON)   # a static libdrdm carries its ITK link dependencies
else()
  set(DRDM_NEEDS_ITK OFF)
endif()
configure_package_config_file(cmake/drdmConfig.cmake.in
  ${PROJECT_BINARY_DIR}/drdmConfig.cmake
  INSTALL_DESTINATION ${DRDM_INSTALL_CMAKEDIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/drdmConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/drdmConfig.cmake ${PROJECT_BINARY_DIR}/drdmConfigVersion.cmake
  DESTINATION ${DRDM_INSTALL_CMAKEDIR})

# Usable from the build tree as well (export(...) + drdm_DIR=<build>).
export(EXPORT drdmTargets NAMESPACE drdm:: FILE ${PROJECT_BINARY_DIR}/drdmTargets.cmake)

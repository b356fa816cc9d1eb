# Installs the library, its headers and a CMake package, so that another project does
#   find_package(diffuse REQUIRED)  and  target_link_libraries(app PRIVATE diffuse::diffuse)
include(CMakePackageConfigHelpers)

install(TARGETS diffuse EXPORT diffuseTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/diffuse DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/include/diffuse/version.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/diffuse)

set(DIFFUSE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/diffuse)
install(EXPORT diffuseTargets NAMESPACE diffuse:: DESTINATION ${DIFFUSE_CMAKE_DIR})
configure_package_config_file(cmake/diffuseConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/diffuseConfig.cmake INSTALL_DESTINATION ${DIFFUSE_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/diffuseConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/diffuseConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/diffuseConfigVersion.cmake DESTINATION ${DIFFUSE_CMAKE_DIR})

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

# pkg-config, next to the CMake package, for C programs on diffuse/c_api.h. Its paths are relative to
# the .pc file (${pcfiledir}), so the prefix given at install time (cmake --install --prefix) is the
# one it names.
set(DIFFUSE_PC_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${DIFFUSE_PC_DIR}")
  set(DIFFUSE_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(DIFFUSE_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(DIFFUSE_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH DIFFUSE_PC_UP "/prefix/${DIFFUSE_PC_DIR}" "/prefix")
  string(REGEX REPLACE "/$" "" DIFFUSE_PC_UP "${DIFFUSE_PC_UP}")
  set(DIFFUSE_PC_PREFIX "\${pcfiledir}/${DIFFUSE_PC_UP}")
  set(DIFFUSE_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(DIFFUSE_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(cmake/diffuse.pc.in ${CMAKE_CURRENT_BINARY_DIR}/diffuse.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/diffuse.pc DESTINATION ${DIFFUSE_PC_DIR})

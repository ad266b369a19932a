# `cmake --install build --prefix P` (README, examples/outside): what an application
# outside this tree needs, and nothing that points back into it.
#
#   P/include/airlock/{host.h,manifest.h,status.h}  the host API
#   P/lib/libairlock.so*                        Airlock::host (everything else inside)
#   P/lib/cmake/Airlock/                        find_package(Airlock): Airlock::host,
#                                               airlock_add_skill(), AIRLOCK_EXTENSION_BINARY
#   P/lib/pkgconfig/airlock.pc
#   P/libexec/airlock/airlock-extension         found by libairlock.so relative to itself
#   P/lib/airlock/libnode.so.108                the private V8, when it came from .deps
#   P/share/airlock/{cmake,sdk}                 the skill SDK (extension/sdk)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(AIRLOCK_CMAKE_INSTALL_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/Airlock")

install(FILES host/include/airlock/host.h host/include/airlock/manifest.h host/include/airlock/skill_set.h proto/include/airlock/status.h
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/airlock" COMPONENT host)
install(TARGETS airlock EXPORT AirlockTargets
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT host)
install(EXPORT AirlockTargets NAMESPACE Airlock:: FILE AirlockTargets.cmake
        DESTINATION "${AIRLOCK_CMAKE_INSTALL_DIR}" COMPONENT host)

# The extension binary, and V8 beside it when V8 is our private copy (a system libnode
# needs no copy). The rpath is relative: the prefix can move.
install(TARGETS airlock-extension RUNTIME DESTINATION "${CMAKE_INSTALL_LIBEXECDIR}/airlock" COMPONENT host)
get_target_property(_v8_lib airlock_v8 IMPORTED_LOCATION)
if(NOT _v8_lib MATCHES "^/usr/lib")
  install(FILES "${_v8_lib}" DESTINATION "${CMAKE_INSTALL_LIBDIR}/airlock" COMPONENT host)
  file(RELATIVE_PATH _rel "/p/${CMAKE_INSTALL_LIBEXECDIR}/airlock" "/p/${CMAKE_INSTALL_LIBDIR}/airlock")
  set_target_properties(airlock-extension PROPERTIES INSTALL_RPATH "$ORIGIN/${_rel}")
endif()

configure_package_config_file(cmake/AirlockConfig.cmake.in
  "${PROJECT_BINARY_DIR}/AirlockConfig.cmake"
  INSTALL_DESTINATION "${AIRLOCK_CMAKE_INSTALL_DIR}"
  PATH_VARS CMAKE_INSTALL_LIBEXECDIR CMAKE_INSTALL_DATADIR)
write_basic_package_version_file("${PROJECT_BINARY_DIR}/AirlockConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/AirlockConfig.cmake" "${PROJECT_BINARY_DIR}/AirlockConfigVersion.cmake"
        DESTINATION "${AIRLOCK_CMAKE_INSTALL_DIR}" COMPONENT host)

configure_file(cmake/airlock.pc.in "${PROJECT_BINARY_DIR}/airlock.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/airlock.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig" COMPONENT host)

# Finds V8 10.2 as shipped in Debian's libnode108/libnode-dev.
#
# tools/setup.sh extracts those packages into ${CMAKE_SOURCE_DIR}/.deps/libnode (they
# cannot be apt-installed beside the machine's nodejs 20). A system copy is used only
# if its headers really are V8 10.2: /usr/include/node may belong to nodejs 20
# (V8 11.3), which links and then fails at run time.
set(AIRLOCK_V8_PREFIX "" CACHE PATH "Prefix holding include/node and lib/<triplet>/libnode.so.108")

function(_airlock_v8_version_ok include_dir out)
  set(${out} FALSE PARENT_SCOPE)
  if(EXISTS "${include_dir}/v8-version.h")
    file(STRINGS "${include_dir}/v8-version.h" _maj REGEX "#define V8_MAJOR_VERSION ")
    file(STRINGS "${include_dir}/v8-version.h" _min REGEX "#define V8_MINOR_VERSION ")
    if(_maj MATCHES " 10$" AND _min MATCHES " 2$")
      set(${out} TRUE PARENT_SCOPE)
    endif()
  endif()
endfunction()

# Relative to this file, not CMAKE_SOURCE_DIR: Airlock may be an add_subdirectory() of another project.
set(_candidates "${AIRLOCK_V8_PREFIX}" "${CMAKE_CURRENT_LIST_DIR}/../.deps/libnode/usr" "/usr")
set(_found "")
foreach(_p IN LISTS _candidates)
  if(_p STREQUAL "")
    continue()
  endif()
  _airlock_v8_version_ok("${_p}/include/node" _ok)
  file(GLOB _libs "${_p}/lib/*/libnode.so.108" "${_p}/lib/libnode.so.108")
  if(_ok AND _libs)
    list(GET _libs 0 _lib)
    set(_found "${_p}")
    break()
  endif()
endforeach()

if(_found STREQUAL "")
  message(FATAL_ERROR "V8 10.2 (Debian libnode108) not found. Run tools/setup.sh, "
                      "or set AIRLOCK_V8_PREFIX to a prefix with include/node and libnode.so.108.")
endif()
get_filename_component(_libdir "${_lib}" DIRECTORY)
message(STATUS "Airlock: V8 10.2 from ${_found} (${_lib})")

add_library(airlock_v8 SHARED IMPORTED GLOBAL)
set_target_properties(airlock_v8 PROPERTIES
  IMPORTED_LOCATION "${_lib}"
  IMPORTED_NO_SONAME FALSE
  INTERFACE_INCLUDE_DIRECTORIES "${_found}/include/node")
# Private prefix: executables find libnode through an rpath, not LD_LIBRARY_PATH.
set(AIRLOCK_V8_LIBDIR "${_libdir}" CACHE INTERNAL "")

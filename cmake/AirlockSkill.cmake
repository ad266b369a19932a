# AirlockSkill: build Airlock skills (WebAssembly, docs/SKILL_ABI.md) from C and C++
# sources.
#
#   airlock_add_skill(<name> SOURCES <src>... [OUTPUT_DIR <dir>] [NO_ASYNCIFY]
#                     [COMPILE_OPTIONS <flag>...] [LINK_OPTIONS <flag>...])
#
# Builds <OUTPUT_DIR>/<name>.wasm (default ${AIRLOCK_SKILL_OUTPUT_DIR}) with custom
# commands, independent of the project's C/C++ toolchain:
#   1. every source, and the SDK's airlock_skill.c, is compiled for wasm32-wasi
#      (--sysroot=${AIRLOCK_WASI_SYSROOT} -O2): .c with clang-19, .cpp/.cc/.cxx/.C with
#      clang++-19 against Debian's wasm32 libc++ (-std=${AIRLOCK_SKILL_CXX_STANDARD},
#      -fno-exceptions: see docs/SKILL_ABI.md, "C++");
#   2. the objects are linked as a WASI reactor with a 64 KiB C stack at the bottom of
#      linear memory (AIRLOCK_SKILL_STACK_SIZE) and stripped (with clang++-19, and so
#      libc++ and libc++abi, when there is a C++ source);
#   3. wasm-opt -O2 runs asyncify over it so airlock.wait / airlock.call can suspend
#      (NO_ASYNCIFY: -O2 only; such a module must not import wait or call).
# COMPILE_OPTIONS are added to every compile (C and C++, e.g. -DNAME=1, or -I with an
# absolute path: commands run in the build tree),
# LINK_OPTIONS to the link (e.g. -Wl,--export=name).
# Creates the target skill_<name>, a dependency of the umbrella target airlock_skills
# (ALL). Works from the source tree and from an installed copy: the SDK is looked up
# relative to this file unless AIRLOCK_SDK_DIR is set.
#
# clock() works (wasi-libc's emulation over the monotonic clock is linked in).
#
# Debian packages: clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 binaryen, and
# for C++ libc++-19-dev-wasm32 libc++abi-19-dev-wasm32.

include_guard(GLOBAL)

set(AIRLOCK_SKILL_CMAKE_FILE "${CMAKE_CURRENT_LIST_FILE}")

if(NOT DEFINED AIRLOCK_SDK_DIR)
  if(EXISTS "${CMAKE_CURRENT_LIST_DIR}/../extension/sdk/include/airlock/skill.h")
    set(AIRLOCK_SDK_DIR "${CMAKE_CURRENT_LIST_DIR}/../extension/sdk")  # source tree
  else()
    set(AIRLOCK_SDK_DIR "${CMAKE_CURRENT_LIST_DIR}/../sdk")            # installed copy
  endif()
endif()
get_filename_component(AIRLOCK_SDK_DIR "${AIRLOCK_SDK_DIR}" ABSOLUTE)
if(NOT EXISTS "${AIRLOCK_SDK_DIR}/include/airlock/skill.h"
   OR NOT EXISTS "${AIRLOCK_SDK_DIR}/src/airlock_skill.c")
  message(FATAL_ERROR "AirlockSkill: no skill SDK in AIRLOCK_SDK_DIR=${AIRLOCK_SDK_DIR} "
                      "(expected include/airlock/skill.h and src/airlock_skill.c)")
endif()
# Also remembered globally, for calls from directories that do not see the variable.
set_property(GLOBAL PROPERTY AIRLOCK_SDK_DIR "${AIRLOCK_SDK_DIR}")

set(AIRLOCK_SKILL_OUTPUT_DIR "${CMAKE_BINARY_DIR}/skills"
    CACHE PATH "Where airlock_add_skill() puts <name>.wasm by default")
set(AIRLOCK_WASI_SYSROOT "/usr" CACHE PATH
    "WASI sysroot for skills (Debian's wasi-libc: /usr, libraries in lib/wasm32-wasi)")
set(AIRLOCK_SKILL_STACK_SIZE 65536 CACHE STRING
    "C (shadow) stack size of a skill in bytes, in linear memory")
set(AIRLOCK_SKILL_CXX_STANDARD c++20 CACHE STRING "-std= of C++ skill sources")

find_program(AIRLOCK_WASM_CLANG NAMES clang-19
             PATHS /usr/lib/llvm-19/bin
             DOC "clang used to compile skills to wasm32-wasi")
if(NOT AIRLOCK_WASM_CLANG)
  message(FATAL_ERROR "AirlockSkill: clang-19 not found. Install the Debian packages "
                      "clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 "
                      "(or set AIRLOCK_WASM_CLANG).")
endif()
# Only needed for C++ sources: airlock_add_skill() says so if one is used without it.
find_program(AIRLOCK_WASM_CLANGXX NAMES clang++-19
             PATHS /usr/lib/llvm-19/bin
             DOC "clang++ used to compile C++ skills to wasm32-wasi")
find_program(AIRLOCK_WASM_OPT NAMES wasm-opt DOC "binaryen wasm-opt (asyncify)")
if(NOT AIRLOCK_WASM_OPT)
  message(FATAL_ERROR "AirlockSkill: wasm-opt not found. Install the Debian package "
                      "binaryen (or set AIRLOCK_WASM_OPT).")
endif()

if(NOT TARGET airlock_skills)
  add_custom_target(airlock_skills ALL COMMENT "Airlock skills")
endif()

function(airlock_add_skill name)
  cmake_parse_arguments(PARSE_ARGV 1 S "NO_ASYNCIFY" "OUTPUT_DIR" "SOURCES;COMPILE_OPTIONS;LINK_OPTIONS")
  if(S_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "airlock_add_skill(${name}): unknown arguments: ${S_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT S_SOURCES)
    message(FATAL_ERROR "airlock_add_skill(${name}): SOURCES is required")
  endif()
  if(TARGET skill_${name})
    message(FATAL_ERROR "airlock_add_skill(${name}): a skill named ${name} already exists")
  endif()
  if(NOT S_OUTPUT_DIR)
    set(S_OUTPUT_DIR "${AIRLOCK_SKILL_OUTPUT_DIR}")
  endif()
  get_filename_component(out_dir "${S_OUTPUT_DIR}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")

  set(sdk_dir "${AIRLOCK_SDK_DIR}")
  if(NOT sdk_dir)
    get_property(sdk_dir GLOBAL PROPERTY AIRLOCK_SDK_DIR)
  endif()
  set(sdk_include "${sdk_dir}/include")
  set(sdk_header "${sdk_include}/airlock/skill.h")
  set(work_dir "${CMAKE_CURRENT_BINARY_DIR}/${name}.skill")
  set(common_flags --target=wasm32-wasi "--sysroot=${AIRLOCK_WASI_SYSROOT}")
  set(cflags ${common_flags} -O2 -Wall -Wextra "-I${sdk_include}" -D_WASI_EMULATED_PROCESS_CLOCKS
      ${S_COMPILE_OPTIONS})
  # C++ without exceptions: Debian's wasm32 libc++abi has no unwinder (-fwasm-exceptions
  # fails to link: no _Unwind_CallPersonality), and asyncify cannot transform wasm
  # exception handling anyway. What would throw aborts instead (a failing `new`, .at()
  # out of range): the call traps with Trap(unreachable).
  set(cxxflags ${cflags} "-std=${AIRLOCK_SKILL_CXX_STANDARD}" -fno-exceptions)
  set(link_driver "${AIRLOCK_WASM_CLANG}")
  set(link_libs -lwasi-emulated-process-clocks)

  # Header dependencies beyond skill.h come from compiler depfiles where supported.
  set(use_depfile OFF)
  if(CMAKE_GENERATOR MATCHES "Ninja|Makefiles")
    set(use_depfile ON)
  endif()

  set(objects "")
  foreach(src IN LISTS S_SOURCES ITEMS "${sdk_dir}/src/airlock_skill.c")
    get_filename_component(src_abs "${src}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    file(RELATIVE_PATH rel "${CMAKE_CURRENT_SOURCE_DIR}" "${src_abs}")
    if(rel MATCHES "^\\.\\./" OR IS_ABSOLUTE "${rel}")
      get_filename_component(rel "${src_abs}" NAME)  # e.g. the SDK source
    endif()
    string(MAKE_C_IDENTIFIER "${rel}" obj_name)
    set(obj "${work_dir}/${obj_name}.o")
    if(src_abs MATCHES "\\.(cpp|cc|cxx|C|c\\+\\+)$")
      if(NOT AIRLOCK_WASM_CLANGXX)
        message(FATAL_ERROR "airlock_add_skill(${name}): ${rel} is C++ but clang++-19 was not found. "
                            "Install the Debian packages clang-19 libc++-19-dev-wasm32 "
                            "libc++abi-19-dev-wasm32 (or set AIRLOCK_WASM_CLANGXX).")
      endif()
      set(compiler "${AIRLOCK_WASM_CLANGXX}")
      set(flags ${cxxflags})
      set(link_driver "${AIRLOCK_WASM_CLANGXX}")
    else()
      set(compiler "${AIRLOCK_WASM_CLANG}")
      set(flags ${cflags})
    endif()
    set(depfile_args "")
    set(depfile_opt "")
    if(use_depfile)
      set(depfile_args -MD -MF "${obj}.d")
      set(depfile_opt DEPFILE "${obj}.d")
    endif()
    add_custom_command(
      OUTPUT "${obj}"
      COMMAND "${CMAKE_COMMAND}" -E make_directory "${work_dir}"
      COMMAND "${compiler}" ${flags} ${depfile_args} -c "${src_abs}" -o "${obj}"
      DEPENDS "${src_abs}" "${sdk_header}"
      ${depfile_opt}
      COMMENT "Compiling skill ${name}: ${rel}"
      VERBATIM)
    list(APPEND objects "${obj}")
  endforeach()

  # Keep target_features through --strip-all so wasm-opt enables exactly the features
  # clang used (sign-ext, mutable-globals, ...); wasm-opt drops it from the output.
  # --stack-first puts the C stack at the bottom of memory, so overflowing it traps
  # (out of bounds) instead of silently overwriting static data.
  set(linked "${work_dir}/${name}.linked.wasm")
  add_custom_command(
    OUTPUT "${linked}"
    COMMAND "${link_driver}" ${common_flags} -mexec-model=reactor
            -Wl,--strip-all -Wl,--keep-section=target_features
            -Wl,--stack-first "-Wl,-z,stack-size=${AIRLOCK_SKILL_STACK_SIZE}"
            ${S_LINK_OPTIONS} ${objects} ${link_libs} -o "${linked}"
    DEPENDS ${objects}
    COMMENT "Linking skill ${name}"
    VERBATIM)

  set(opt_flags -O2)
  if(NOT S_NO_ASYNCIFY)
    list(APPEND opt_flags --asyncify "--pass-arg=asyncify-imports@airlock.wait,airlock.call")
  endif()
  set(wasm "${out_dir}/${name}.wasm")
  add_custom_command(
    OUTPUT "${wasm}"
    COMMAND "${CMAKE_COMMAND}" -E make_directory "${out_dir}"
    COMMAND "${AIRLOCK_WASM_OPT}" ${opt_flags} --strip-target-features "${linked}" -o "${wasm}"
    DEPENDS "${linked}"
    COMMENT "Optimizing skill ${name} -> ${wasm}"
    VERBATIM)

  add_custom_target(skill_${name} DEPENDS "${wasm}" SOURCES ${S_SOURCES})
  set_target_properties(skill_${name} PROPERTIES AIRLOCK_SKILL_FILE "${wasm}")
  add_dependencies(airlock_skills skill_${name})
endfunction()

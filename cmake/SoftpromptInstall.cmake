# Packaging: the aggregate library softprompt::softprompt, the generated version header, and the
# install rules (libraries, public headers, CMake package) behind `cmake --install`.
#
# Included once, at the end of the top-level CMakeLists.txt, when every library target exists.
# Install rules are generated when softprompt is the top-level project (SOFTPROMPT_INSTALL).
# An outside project then uses softprompt either way:
#   find_package(softprompt 0.1 REQUIRED)          # against an installed prefix
#   add_subdirectory(path/to/softprompt softprompt) # from source
#   target_link_libraries(app PRIVATE softprompt::softprompt)
#
# Which libraries are installed and exported. Every library target that softprompt::softprompt
# reaches through its link interface is found by walking it, so a new static library that
# softprompt_engine (or any layer) links is installed without touching this file. A library that
# is not reachable that way but should still ship is named explicitly, from any directory:
#   set_property(GLOBAL APPEND PROPERTY SOFTPROMPT_EXPORTED_TARGETS my_target)
# or, at the top level before this file is included:
#   list(APPEND SOFTPROMPT_EXPORTED_TARGETS my_target)
# Installed targets are exported as softprompt::<name without the softprompt_ prefix>
# (softprompt::engine, softprompt::peft, ...). A library that links a new third-party package
# must also find it again in cmake/softpromptConfig.cmake.in, or consumers fail to link.
#
# Install layout (<prefix> is CMAKE_INSTALL_PREFIX or `cmake --install --prefix`):
#   <prefix>/include/softprompt/softprompt.h, tensor.h, models.h, peft.h, training.h, version.h
#   <prefix>/include/softprompt/{engine,models,peft}/...   the headers those include, laid out as
#                                                          in the source tree ("engine/tensor.h")
#   <prefix>/lib/libsoftprompt_*.a                         the static libraries
#   <prefix>/lib/cmake/softprompt/                         softpromptConfig.cmake, ...Version.cmake,
#                                                          softpromptTargets*.cmake
#   <prefix>/bin/softprompt                                the command-line program
# softprompt::softprompt puts both <prefix>/include and <prefix>/include/softprompt on the include
# path: the first for <softprompt/softprompt.h>, the second because the library's own headers
# include each other relative to the repository root. CUDA sources and headers (engine/cuda,
# engine/cpu, kernels/*.cuh, kernels/emu) are internals and are not installed.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(SOFTPROMPT_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR}/softprompt)
set(SOFTPROMPT_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/softprompt)

# ---- version header ----
configure_file(${softprompt_SOURCE_DIR}/include/softprompt/version.h.in
               ${softprompt_BINARY_DIR}/include/softprompt/version.h @ONLY)

# ---- the aggregate target ----
# The executable `softprompt` (cli/) owns the plain target name, so the library target is
# softprompt_library, exported and aliased as softprompt::softprompt.
add_library(softprompt_library INTERFACE)
add_library(softprompt::softprompt ALIAS softprompt_library)
set_target_properties(softprompt_library PROPERTIES EXPORT_NAME softprompt)
target_link_libraries(softprompt_library INTERFACE softprompt_peft softprompt_models softprompt_mpi
  softprompt_engine)
# Consumers compile the headers as C++20 whatever their own default is.
target_compile_features(softprompt_library INTERFACE cxx_std_20)
target_include_directories(softprompt_library INTERFACE
  $<BUILD_INTERFACE:${softprompt_SOURCE_DIR}/include>
  $<BUILD_INTERFACE:${softprompt_BINARY_DIR}/include>
  $<BUILD_INTERFACE:${SOFTPROMPT_INCLUDE_ROOT}>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
  $<INSTALL_INTERFACE:${SOFTPROMPT_INSTALL_INCLUDEDIR}>)

# ---- install rules ----
# On by default when softprompt is the top-level project; a parent project that pulls it in with
# add_subdirectory gets no install rules unless it asks (its own install would otherwise copy
# softprompt, and fail for targets an EXCLUDE_FROM_ALL subdirectory never built).
option(SOFTPROMPT_INSTALL "Generate softprompt's install rules (cmake --install)" ${PROJECT_IS_TOP_LEVEL})
if(NOT SOFTPROMPT_INSTALL)
  return()
endif()

# ---- which targets to export ----
# Walks INTERFACE_LINK_LIBRARIES from `roots` and returns every non-imported library target met
# (aliases resolved, $<LINK_ONLY:...> unwrapped, other generator expressions skipped).
function(softprompt_collect_link_closure out_var)
  set(pending ${ARGN})
  set(found)
  while(pending)
    list(POP_FRONT pending item)
    if(item MATCHES "^\\$<LINK_ONLY:([^$<>]+)>$")
      set(item ${CMAKE_MATCH_1})
    endif()
    if(item MATCHES "\\$<" OR NOT TARGET ${item})
      continue()
    endif()
    get_target_property(aliased ${item} ALIASED_TARGET)
    if(aliased)
      set(item ${aliased})
    endif()
    get_target_property(imported ${item} IMPORTED)
    get_target_property(type ${item} TYPE)
    if(imported OR item IN_LIST found OR NOT type MATCHES "LIBRARY$")
      continue()
    endif()
    list(APPEND found ${item})
    get_target_property(deps ${item} INTERFACE_LINK_LIBRARIES)
    if(deps)
      list(APPEND pending ${deps})
    endif()
  endwhile()
  set(${out_var} ${found} PARENT_SCOPE)
endfunction()

get_property(_extra_exported GLOBAL PROPERTY SOFTPROMPT_EXPORTED_TARGETS)
softprompt_collect_link_closure(SOFTPROMPT_EXPORTED_TARGETS
  softprompt_library ${SOFTPROMPT_EXPORTED_TARGETS} ${_extra_exported})

foreach(_target IN LISTS SOFTPROMPT_EXPORTED_TARGETS)
  # softprompt_engine -> softprompt::engine (softprompt_library already says EXPORT_NAME).
  get_target_property(_export_name ${_target} EXPORT_NAME)
  if(NOT _export_name)
    string(REGEX REPLACE "^softprompt_" "" _export_name ${_target})
    set_target_properties(${_target} PROPERTIES EXPORT_NAME ${_export_name})
  endif()
  # Include directories given as plain source/build paths only make sense in the build tree;
  # the installed targets get <prefix>/include/softprompt from INCLUDES DESTINATION below.
  get_target_property(_includes ${_target} INTERFACE_INCLUDE_DIRECTORIES)
  if(_includes)
    set(_rewritten)
    foreach(_dir IN LISTS _includes)
      if(NOT _dir MATCHES "^\\$<")
        cmake_path(IS_PREFIX softprompt_SOURCE_DIR "${_dir}" NORMALIZE _in_source)
        cmake_path(IS_PREFIX softprompt_BINARY_DIR "${_dir}" NORMALIZE _in_build)
        if(_in_source OR _in_build)
          set(_dir "$<BUILD_INTERFACE:${_dir}>")
        endif()
      endif()
      list(APPEND _rewritten "${_dir}")
    endforeach()
    set_property(TARGET ${_target} PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${_rewritten}")
  endif()
endforeach()
message(STATUS "softprompt: exported targets: ${SOFTPROMPT_EXPORTED_TARGETS}")

# ---- install: libraries ----
install(TARGETS ${SOFTPROMPT_EXPORTED_TARGETS}
  EXPORT softpromptTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  OBJECTS DESTINATION ${CMAKE_INSTALL_LIBDIR}/softprompt/objects
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} ${SOFTPROMPT_INSTALL_INCLUDEDIR})
if(TARGET softprompt)
  get_target_property(_cli_type softprompt TYPE)
  if(_cli_type STREQUAL "EXECUTABLE")
    install(TARGETS softprompt RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endif()

# ---- install: headers ----
install(DIRECTORY ${softprompt_SOURCE_DIR}/include/softprompt/
  DESTINATION ${SOFTPROMPT_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")
install(FILES ${softprompt_BINARY_DIR}/include/softprompt/version.h
  DESTINATION ${SOFTPROMPT_INSTALL_INCLUDEDIR})
# The layers' headers, minus the backends' internals. Nothing installed may include a CUDA
# header: the public API builds without the CUDA toolkit.
foreach(_layer engine models peft)
  install(DIRECTORY ${softprompt_SOURCE_DIR}/${_layer}/
    DESTINATION ${SOFTPROMPT_INSTALL_INCLUDEDIR}/${_layer}
    FILES_MATCHING PATTERN "*.h"
    PATTERN "cpu" EXCLUDE
    PATTERN "cuda" EXCLUDE)
endforeach()

# kernels/ ships only the plain-C++ math headers (*.h, never *.cuh or kernels/emu) that an
# installed header includes, directly or through another kernels/ header.
file(GLOB _layer_headers
  ${softprompt_SOURCE_DIR}/engine/*.h ${softprompt_SOURCE_DIR}/engine/ops/*.h
  ${softprompt_SOURCE_DIR}/engine/optim/*.h ${softprompt_SOURCE_DIR}/models/*.h
  ${softprompt_SOURCE_DIR}/peft/*.h)
set(_scan ${_layer_headers})
set(_kernel_headers)
while(_scan)
  list(POP_FRONT _scan _header)
  file(STRINGS ${_header} _includes REGEX "^[ \t]*#[ \t]*include[ \t]*\"[^\"]+\"")
  foreach(_line IN LISTS _includes)
    string(REGEX REPLACE "^[^\"]*\"([^\"]+)\".*$" "\\1" _included "${_line}")
    if(_included MATCHES "^kernels/[^/]+\\.h$" AND NOT _included IN_LIST _kernel_headers)
      list(APPEND _kernel_headers ${_included})
      list(APPEND _scan ${softprompt_SOURCE_DIR}/${_included})
    elseif(_included MATCHES "\\.cuh$|^kernels/emu/|^engine/cuda/|^engine/cpu/")
      message(WARNING "softprompt: installed header ${_header} includes ${_included}, which is "
                      "not installed; the public headers must not depend on backend internals")
    endif()
  endforeach()
endwhile()
foreach(_header IN LISTS _kernel_headers)
  install(FILES ${softprompt_SOURCE_DIR}/${_header} DESTINATION ${SOFTPROMPT_INSTALL_INCLUDEDIR}/kernels)
endforeach()

# ---- install: the CMake package ----
install(EXPORT softpromptTargets
  NAMESPACE softprompt::
  DESTINATION ${SOFTPROMPT_INSTALL_CMAKEDIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/softpromptConfig.cmake.in
  ${softprompt_BINARY_DIR}/softpromptConfig.cmake
  INSTALL_DESTINATION ${SOFTPROMPT_INSTALL_CMAKEDIR})
write_basic_package_version_file(${softprompt_BINARY_DIR}/softpromptConfigVersion.cmake
  VERSION ${softprompt_VERSION}
  COMPATIBILITY SameMajorVersion)
install(FILES
  ${softprompt_BINARY_DIR}/softpromptConfig.cmake
  ${softprompt_BINARY_DIR}/softpromptConfigVersion.cmake
  DESTINATION ${SOFTPROMPT_INSTALL_CMAKEDIR})

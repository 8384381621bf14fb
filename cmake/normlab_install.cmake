# cmake --install: the headers, libnormlab (normlab::normlab), libnormlab_experiments
# (normlab::experiments), the normlab program, plot.py, and the CMake package
# (find_package(normlab) + normlab_add_experiment) under <prefix>/lib/cmake/normlab.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# Consumers name the targets as the package exports them, in this build too.
set_target_properties(normlab_lib PROPERTIES EXPORT_NAME normlab)
set_target_properties(normlab_experiments PROPERTIES EXPORT_NAME experiments)
add_library(normlab::normlab ALIAS normlab_lib)
add_library(normlab::experiments ALIAS normlab_experiments)
# The headers need C++20 wherever they are included.
target_compile_features(normlab_lib PUBLIC cxx_std_20)
# Sanitized objects need the sanitizers' runtime in every program that links them.
if(NORMLAB_SANITIZE)
  target_link_options(normlab_lib INTERFACE -fsanitize=address,undefined)
endif()

# Headers go to <prefix>/include/normlab/<folder>/, and <prefix>/include/normlab is the include
# directory: the include lines stay the ones used inside normlab ("framework/tensor.h"), while
# folder names as generic as framework/ and experiments/ stay out of <prefix>/include itself.
set(NORMLAB_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR}/normlab)
target_include_directories(normlab_lib INTERFACE $<INSTALL_INTERFACE:${NORMLAB_INSTALL_INCLUDEDIR}>)
install(DIRECTORY framework autograd norm optim experiments DESTINATION ${NORMLAB_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "*.cuh")

install(TARGETS normlab_lib normlab_experiments EXPORT normlabTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
# The program is installed, not exported: normlab::normlab names the library.
install(TARGETS normlab RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# plot.py, and the main.cpp that normlab_add_experiment compiles into each program. An installed
# normlab program finds plot.py by this path from its own folder (experiments/sweep.cpp).
set(NORMLAB_INSTALL_DATADIR ${CMAKE_INSTALL_DATADIR}/normlab)
install(FILES ${PROJECT_SOURCE_DIR}/experiments/plot.py ${PROJECT_SOURCE_DIR}/experiments/main.cpp
        DESTINATION ${NORMLAB_INSTALL_DATADIR})
file(RELATIVE_PATH _normlab_plot_from_program ${CMAKE_INSTALL_FULL_BINDIR}
     ${CMAKE_INSTALL_FULL_DATADIR}/normlab/plot.py)
target_compile_definitions(normlab_experiments PRIVATE NORMLAB_PLOT_FROM_PROGRAM="${_normlab_plot_from_program}")

# The packages the installed targets link to, as find_dependency() arguments, with
# "IF <variable>" for one the build may leave out. A new dependency is one more line.
set(_normlab_package_dependencies
  "dnnl CONFIG"
  "OpenMP COMPONENTS CXX"
  "HDF5 COMPONENTS C"
  "CUDAToolkit IF NORMLAB_CUDA"
  "MPI COMPONENTS C IF NORMLAB_MPI")
set(NORMLAB_FIND_DEPENDENCIES "")
foreach(dependency IN LISTS _normlab_package_dependencies)
  if(dependency MATCHES "^(.*) IF ([A-Za-z0-9_]+)$")
    if(NOT ${CMAKE_MATCH_2})
      continue()
    endif()
    set(dependency ${CMAKE_MATCH_1})
  endif()
  string(APPEND NORMLAB_FIND_DEPENDENCIES "find_dependency(${dependency})\n")
endforeach()
if(NORMLAB_CUDNN)
  # cuDNN has no CMake package: the targets link the library found here by its path.
  string(APPEND NORMLAB_FIND_DEPENDENCIES
         "if(NOT EXISTS \"${NORMLAB_CUDNN_LIBRARY}\")\n"
         "  set(normlab_FOUND FALSE)\n"
         "  set(normlab_NOT_FOUND_MESSAGE \"normlab was built with cuDNN ${NORMLAB_CUDNN_LIBRARY}, which is not there\")\n"
         "  return()\n"
         "endif()\n")
endif()

set(_normlab_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/normlab)
install(EXPORT normlabTargets NAMESPACE normlab:: DESTINATION ${_normlab_cmake_dir})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/normlabConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/normlabConfig.cmake
                              INSTALL_DESTINATION ${_normlab_cmake_dir}
                              PATH_VARS NORMLAB_INSTALL_DATADIR)
# Before 1.0 a minor release may change the API, so find_package(normlab 0.1) accepts 0.1.x
# only (SameMinorVersion); from 1.0 on SameMajorVersion would be the rule.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/normlabConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/normlabConfig.cmake ${PROJECT_BINARY_DIR}/normlabConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/normlab_add_experiment.cmake
        DESTINATION ${_normlab_cmake_dir})

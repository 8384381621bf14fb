# normlab_add_experiment(name file.cpp ...): a program with the normlab command line whose
# registry also holds the experiments the files register (NORMLAB_REGISTER_EXPERIMENT):
#   ./build/name run my-study
# The same function serves the normlab build and an installed normlab (find_package(normlab)):
# NORMLAB_MAIN_SOURCE is the program's main.cpp, normlab::experiments the library; from an
# installed normlab, NORMLAB_PLOT_SCRIPT is its plot.py, which the program's sweeps then use.
function(normlab_add_experiment name)
  add_executable(${name} ${ARGN} ${NORMLAB_MAIN_SOURCE})
  target_link_libraries(${name} PRIVATE normlab::experiments)
  if(NORMLAB_PLOT_SCRIPT)
    target_compile_definitions(${name} PRIVATE NORMLAB_PLOT_SCRIPT="${NORMLAB_PLOT_SCRIPT}")
  endif()
endfunction()

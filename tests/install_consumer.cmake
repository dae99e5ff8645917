# Installs the build into a scratch prefix, then builds and runs a consumer through
# find_package(adamjit) and checks the pkg-config file. Arguments: -DBUILD_DIR= -DSOURCE_DIR= -DWORK=
file(REMOVE_RECURSE "${WORK}")
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK}/prefix")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/consumer" -B "${WORK}/consumer" "-DCMAKE_PREFIX_PATH=${WORK}/prefix")
run(${CMAKE_COMMAND} --build "${WORK}/consumer")
run("${WORK}/consumer/consumer")
message(STATUS "${last_output}")

find_program(PKG_CONFIG pkg-config REQUIRED)
file(GLOB pc_dir LIST_DIRECTORIES true "${WORK}/prefix/lib*/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
run(${PKG_CONFIG} --cflags --libs adamjit)
if(NOT last_output MATCHES "-I${WORK}/prefix/[^ ]*include" OR NOT last_output MATCHES "-ladamjit")
  message(FATAL_ERROR "pkg-config adamjit gave '${last_output}', expected the scratch prefix's include dir and -ladamjit")
endif()

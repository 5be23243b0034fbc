# Installs the already-built libdrdm into a scratch prefix, then configures,
# builds and runs tests/consumer against it with find_package(drdm).
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
set(_launcher "")
find_program(_ccache ccache)
if(_ccache)
  set(_launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${_ccache})
endif()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/build
    -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DTorch_DIR=${CONSUMER_TORCH_DIR}
    -DCMAKE_BUILD_TYPE=Release ${_launcher})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
# The installed default model and the streaming API, from outside the project.
run(${WORK_DIR}/build/deformer_training_loop ${WORK_DIR}/prefix/share/drdm/models/cardiac2d/model.pt cpu)

# Third-party dependencies of libdrdm. Every one of them is a Debian package
# except LibTorch, which comes from PyPI's torch wheel (see scripts/setup.sh)
# or from any LibTorch 2.x download (set Torch_DIR).

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM} CACHE STRING "" FORCE)
endif()

# The CUDA build of LibTorch looks for the CUDA toolkit at configure time.
if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
  set(CUDAToolkit_ROOT /usr/local/cuda)
endif()
# sm_90 covers H100/H200; kernels of our own (if any) are built for it.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "9.0" CACHE STRING "CUDA architectures for LibTorch extensions")
endif()

if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  # Ask the Python interpreter where the torch wheel keeps its CMake package.
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE _drdm_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
      ERROR_QUIET RESULT_VARIABLE _drdm_torch_rc)
    if(_drdm_torch_rc EQUAL 0 AND _drdm_torch_prefix)
      list(APPEND CMAKE_PREFIX_PATH ${_drdm_torch_prefix})
    endif()
  endif()
endif()
find_package(Torch REQUIRED)
message(STATUS "libdrdm: LibTorch ${Torch_VERSION} from ${Torch_DIR}")
# Installed binaries must find LibTorch. CMAKE_INSTALL_RPATH_USE_LINK_PATH
# skips directories inside the project, which is where scripts/setup.sh puts
# the torch wheel (.venv), so its library folder is added explicitly.
get_filename_component(DRDM_TORCH_LIBRARY_DIR "${TORCH_LIBRARY}" DIRECTORY)
list(APPEND CMAKE_INSTALL_RPATH "${DRDM_TORCH_LIBRARY_DIR}")

find_package(ITK 5 REQUIRED COMPONENTS
  ITKCommon ITKIOImageBase ITKIONIFTI ITKIOMeta ITKIONRRD ITKIOPNG)
find_package(spdlog REQUIRED)
find_package(ZLIB REQUIRED)  # image_io checks compressed data sizes itself
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 QUIET CONFIG)
if(NOT CLI11_FOUND)
  find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp REQUIRED)
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  target_include_directories(CLI11::CLI11 INTERFACE ${CLI11_INCLUDE_DIR})
endif()

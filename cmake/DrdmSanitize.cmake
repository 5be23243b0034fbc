# DRDM_SANITIZE=ON builds the library, programs, tests and benchmarks with
# AddressSanitizer + UndefinedBehaviorSanitizer (GCC or Clang). LibTorch, ITK
# and Python are not instrumented; scripts/test.sh --sanitize sets the run-time
# options and suppressions (scripts/sanitizer/) that this needs.
#
# UBSan stays recoverable at compile time; UBSAN_OPTIONS=halt_on_error=1 makes
# every finding fatal at run time, while the suppressions file can still
# silence a finding inside third-party headers.
# Instrumented programs run 5-15 times slower (measured: cli_deform 33 s ->
# 516 s, cli_harden_write 36 s -> 320 s, cli_harden_args 99 s -> over 1200 s
# beside other sanitized tests): in a sanitizer build the tests of the
# calling directory get eight times their time limit.
function(drdm_scale_test_timeouts)
  if(NOT DRDM_SANITIZE)
    return()
  endif()
  get_property(_tests DIRECTORY PROPERTY TESTS)
  foreach(_t ${_tests})
    get_test_property(${_t} TIMEOUT _limit)
    if(_limit)
      math(EXPR _limit "${_limit} * 8")
      set_tests_properties(${_t} PROPERTIES TIMEOUT ${_limit})
    endif()
  endforeach()
endfunction()

if(NOT DRDM_SANITIZE)
  return()
endif()
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  message(FATAL_ERROR "DRDM_SANITIZE needs GCC or Clang")
endif()
# float-cast-overflow (a double out of an integer's range) is part of Clang's
# "undefined" but not of GCC's, so it is named.
set(_drdm_san -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer)
add_compile_options(${_drdm_san} -g)
add_link_options(${_drdm_san})
# -O1 keeps the instrumented build fast enough to run the whole suite while
# keeping stack traces readable; it replaces the build type's -O2/-O3.
foreach(_cfg RELEASE RELWITHDEBINFO MINSIZEREL)
  set(CMAKE_CXX_FLAGS_${_cfg} "-O1 -DNDEBUG" CACHE STRING "" FORCE)
  set(CMAKE_C_FLAGS_${_cfg} "-O1 -DNDEBUG" CACHE STRING "" FORCE)
endforeach()
message(STATUS "libdrdm: ASan + UBSan build (DRDM_SANITIZE=ON)")

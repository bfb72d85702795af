# Compile-fail check, run as `cmake -P`. Inputs: COMPILER, SOURCE, FLAGS (a |-separated list).
# The source must compile as it is (the control), and fail with -DSTRATA_COMPILE_FAIL, printing
# every text given on a line of the form `// expect: TEXT` in the source.
foreach(var COMPILER SOURCE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "compile_fail.cmake: ${var} is not set")
  endif()
endforeach()

string(REPLACE "|" ";" FLAGS "${FLAGS}")
file(STRINGS "${SOURCE}" expect_lines REGEX "^// expect: ")
if(NOT expect_lines)
  message(FATAL_ERROR "${SOURCE}: no `// expect:` line")
endif()

execute_process(COMMAND "${COMPILER}" ${FLAGS} -fsyntax-only "${SOURCE}"
  RESULT_VARIABLE control_rc OUTPUT_VARIABLE control_out ERROR_VARIABLE control_out)
if(NOT control_rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE}: the control (without STRATA_COMPILE_FAIL) does not compile:\n${control_out}")
endif()

execute_process(COMMAND "${COMPILER}" ${FLAGS} -DSTRATA_COMPILE_FAIL -fsyntax-only "${SOURCE}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE}: compiled with STRATA_COMPILE_FAIL, but it must not")
endif()
foreach(line IN LISTS expect_lines)
  string(REGEX REPLACE "^// expect: " "" text "${line}")
  string(FIND "${out}" "${text}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${SOURCE}: the diagnostic does not contain\n  ${text}\nIt was:\n${out}")
  endif()
endforeach()
message(STATUS "${SOURCE}: fails to compile with the expected message")

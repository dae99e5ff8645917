# Bad invocations of the `adamjit` command must fail cleanly: the documented exit code
# (2 = bad command line, 1 = a run failed), a message on stderr, and no crash.
# Run as: cmake -DADAMJIT=<path to adamjit> -P tool_errors.cmake
cmake_minimum_required(VERSION 3.20)
if(NOT DEFINED ADAMJIT)
  message(FATAL_ERROR "tool_errors.cmake needs -DADAMJIT=<path of the adamjit binary>")
endif()

# expect_exit(<code> <args>...): runs `adamjit <args>` and checks the exit code and stderr.
function(expect_exit code)
  execute_process(COMMAND ${ADAMJIT} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                  TIMEOUT 60)
  string(REPLACE ";" " " shown "${ARGN}")
  # rc is a text such as "Segmentation fault" when the process did not exit normally.
  if(NOT rc STREQUAL "${code}")
    message(SEND_ERROR "adamjit ${shown}: exit '${rc}', expected ${code}\nstdout: ${out}\nstderr: ${err}")
  elseif(NOT code EQUAL 0 AND err STREQUAL "")
    message(SEND_ERROR "adamjit ${shown}: exit ${rc} but nothing on stderr")
  elseif(code EQUAL 2 AND NOT err MATCHES "--help")
    message(SEND_ERROR "adamjit ${shown}: a usage error should point to --help; stderr: ${err}")
  else()
    string(STRIP "${err}" first_line)
    string(REGEX REPLACE "\n.*" "" first_line "${first_line}")
    message(STATUS "ok (${rc}): adamjit ${shown}   ${first_line}")
  endif()
endfunction()

# Bad command lines: exit 2, before any work is done.
expect_exit(2)
expect_exit(2 nosuchcommand)
expect_exit(2 --nosuchoption)
expect_exit(2 info --verbose)
expect_exit(2 train --steps abc)
expect_exit(2 train --steps 0)
expect_exit(2 train --steps -5)
expect_exit(2 train --steps 12x)
expect_exit(2 train --steps " 12")
expect_exit(2 train --steps 99999999999999999999)
expect_exit(2 train --steps)
expect_exit(2 train --seed -1)
expect_exit(2 train --backend nosuch)
expect_exit(2 train --out=)
expect_exit(2 train --quiet=yes)
expect_exit(2 train --bogus)
expect_exit(2 bench --sizes 0)
expect_exit(2 bench --sizes 1e6,)
expect_exit(2 bench --sizes 1e6,1e6)
expect_exit(2 bench --repeats 0)
expect_exit(2 bench --warmup -1)
expect_exit(2 bench --threads 0)
expect_exit(2 bench --backend nosuch)

# A run that cannot work: exit 1 with the reason.
expect_exit(1 train --out /proc/forbidden/x)

# Help and version succeed and print to stdout.
expect_exit(0 --help)
expect_exit(0 help)
expect_exit(0 -h)
expect_exit(0 train --help)
expect_exit(0 bench --help)
expect_exit(0 --version)
execute_process(COMMAND ${ADAMJIT} --help RESULT_VARIABLE rc OUTPUT_VARIABLE out)
foreach(word info train bench --steps --sizes --json)
  if(NOT out MATCHES "${word}")
    message(SEND_ERROR "adamjit --help does not mention ${word}")
  endif()
endforeach()

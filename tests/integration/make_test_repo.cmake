# Generates the integration tests' model repository (idempotent).
execute_process(COMMAND ${PYTHON} ${SRC}/tools/make_example_models.py --out ${OUT}
                RESULT_VARIABLE rc1)
execute_process(COMMAND ${PYTHON} ${SRC}/tests/fixtures/make_bad_models.py --out ${OUT}
                RESULT_VARIABLE rc2)
if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0)
  message(FATAL_ERROR "test repository generation failed")
endif()
# A folder whose name must be refused (never listed, never loaded).
file(MAKE_DIRECTORY "${OUT}/bad..name/1")

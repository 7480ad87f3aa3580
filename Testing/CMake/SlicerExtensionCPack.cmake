# Test-only stand-in for Slicer's extension packaging: it must come after the config generation.
if(NOT _STAND_IN_CONFIG_GENERATED)
  message(FATAL_ERROR "include(\${Slicer_EXTENSION_GENERATE_CONFIG}) must come before include(\${Slicer_EXTENSION_CPACK})")
endif()

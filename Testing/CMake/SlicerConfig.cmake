# Test-only stand-in for Slicer's SlicerConfig.cmake.
#
# `cmake -S <extension> -B <build> -DSlicer_DIR=<this folder>` configures the extension without a
# Slicer build. The stand-in macros fail like Slicer's do when a listed script or resource does
# not exist, and stricter than Slicer when an EXTENSION_* value is unset. What the extension
# declared is written to <build>/extension-manifest.json for the tests to inspect.
set(Slicer_FOUND TRUE)
# The oldest Slicer the extension supports; a test overrides it with -DSTAND_IN_SLICER_VERSION=...
if(NOT STAND_IN_SLICER_VERSION)
  set(STAND_IN_SLICER_VERSION "5.10.0")
endif()
set(Slicer_VERSION "${STAND_IN_SLICER_VERSION}")
string(REPLACE "." ";" _stand_in_version_parts "${Slicer_VERSION}")
list(GET _stand_in_version_parts 0 Slicer_VERSION_MAJOR)
list(GET _stand_in_version_parts 1 Slicer_VERSION_MINOR)
set(Slicer_REQUIRED_PYTHON_VERSION "3.12")
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake)

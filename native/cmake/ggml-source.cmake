# Obtain the pinned GGML source (ggml 0.15.3) without reaching GitHub.
#
# Order of preference:
#   1. -DGGML_SOURCE_DIR=/path/to/ggml             (any checkout of ggml 0.15.3)
#   2. -DACTQUANT_GGML_FETCHCONTENT=ON             (machines with internet: FetchContent of ggml-org/ggml,
#                                                   tag v0.15.3, see README "Building GGML from GitHub")
#   3. default: the PyPI sdist ggml-python==0.0.45, which vendors the full ggml 0.15.3 tree under vendor/ggml.
#      It is downloaded from PyPI's file host (override: env ACTQUANT_GGML_SDIST_URL), its sha256 is verified,
#      and it is extracted into a build cache (ACTQUANT_CACHE_DIR, default ~/.cache/actquant) — never into git.

set(ACTQUANT_GGML_SDIST_NAME "ggml_python-0.0.45.tar.gz")
set(ACTQUANT_GGML_SDIST_SHA256 "10aac52075cf3c7ef2b00d6c35b1c23f7b018dbeff8ae8df67339b4be1166f05")
set(ACTQUANT_GGML_GIT_TAG "v0.15.3")
if(DEFINED ENV{ACTQUANT_GGML_SDIST_URL})
  set(ACTQUANT_GGML_SDIST_URL "$ENV{ACTQUANT_GGML_SDIST_URL}")
else()
  set(ACTQUANT_GGML_SDIST_URL "https://files.pythonhosted.org/packages/0f/0e/ef343189f9e31b651e57770d04a0e5fc64795d3ee9e8f46fe0fc5e0aa8e0/${ACTQUANT_GGML_SDIST_NAME}")
endif()

if(NOT DEFINED ACTQUANT_CACHE_DIR)
  if(DEFINED ENV{ACTQUANT_CACHE_DIR})
    set(ACTQUANT_CACHE_DIR "$ENV{ACTQUANT_CACHE_DIR}")
  else()
    set(ACTQUANT_CACHE_DIR "$ENV{HOME}/.cache/actquant")
  endif()
endif()

function(actquant_fetch_ggml_from_pypi out_dir)
  set(dl_dir "${ACTQUANT_CACHE_DIR}/sdist")
  set(src_root "${ACTQUANT_CACHE_DIR}/ggml-0.15.3")
  set(sdist "${dl_dir}/${ACTQUANT_GGML_SDIST_NAME}")
  if(EXISTS "${src_root}/vendor/ggml/CMakeLists.txt")
    set(${out_dir} "${src_root}/vendor/ggml" PARENT_SCOPE)
    return()
  endif()
  file(MAKE_DIRECTORY "${dl_dir}")
  if(NOT EXISTS "${sdist}")
    message(STATUS "actquant: downloading ggml source ${ACTQUANT_GGML_SDIST_URL}")
    file(DOWNLOAD "${ACTQUANT_GGML_SDIST_URL}" "${sdist}.part" STATUS st TLS_VERIFY ON
         EXPECTED_HASH SHA256=${ACTQUANT_GGML_SDIST_SHA256})
    list(GET st 0 rc)
    if(NOT rc EQUAL 0)
      file(REMOVE "${sdist}.part")
      message(FATAL_ERROR "actquant: could not download ${ACTQUANT_GGML_SDIST_URL}: ${st}\n"
                          "Set ACTQUANT_GGML_SDIST_URL to a mirror, put ${ACTQUANT_GGML_SDIST_NAME} into ${dl_dir}, "
                          "or pass -DGGML_SOURCE_DIR=<ggml 0.15.3 source>.")
    endif()
    file(RENAME "${sdist}.part" "${sdist}")
  endif()
  file(SHA256 "${sdist}" got)
  if(NOT got STREQUAL ACTQUANT_GGML_SDIST_SHA256)
    file(REMOVE "${sdist}")
    message(FATAL_ERROR "actquant: sha256 mismatch for ${sdist}: got ${got}, "
                        "expected ${ACTQUANT_GGML_SDIST_SHA256}. The file was removed; retry or pass GGML_SOURCE_DIR.")
  endif()
  set(tmp "${ACTQUANT_CACHE_DIR}/extract-tmp")
  file(REMOVE_RECURSE "${tmp}")
  file(ARCHIVE_EXTRACT INPUT "${sdist}" DESTINATION "${tmp}")
  file(REMOVE_RECURSE "${src_root}")
  file(RENAME "${tmp}/ggml_python-0.0.45" "${src_root}")
  file(REMOVE_RECURSE "${tmp}")
  set(${out_dir} "${src_root}/vendor/ggml" PARENT_SCOPE)
endfunction()

if(GGML_SOURCE_DIR)
  if(NOT EXISTS "${GGML_SOURCE_DIR}/CMakeLists.txt")
    message(FATAL_ERROR "actquant: GGML_SOURCE_DIR=${GGML_SOURCE_DIR} has no CMakeLists.txt")
  endif()
elseif(ACTQUANT_GGML_FETCHCONTENT)
  include(FetchContent)
  FetchContent_Declare(ggml GIT_REPOSITORY https://github.com/ggml-org/ggml.git GIT_TAG ${ACTQUANT_GGML_GIT_TAG})
  FetchContent_Populate(ggml)
  set(GGML_SOURCE_DIR "${ggml_SOURCE_DIR}")
else()
  actquant_fetch_ggml_from_pypi(GGML_SOURCE_DIR)
endif()
message(STATUS "actquant: GGML source: ${GGML_SOURCE_DIR}")

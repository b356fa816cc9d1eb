# Finds diffuse's dependencies. On Debian they all come from apt (scripts/setup.sh); on the GPU machine
# libtorch (CUDA) and NCCL come from the Python wheels and the rest from unpacked Debian packages.

find_package(Torch REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(PNG REQUIRED)

find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h)
find_library(SENTENCEPIECE_LIBRARY sentencepiece)
# The trainer makes a small T5 vocabulary for random pipelines (make_random_pipeline).
find_library(SENTENCEPIECE_TRAIN_LIBRARY sentencepiece_train)
if(NOT SENTENCEPIECE_INCLUDE_DIR OR NOT SENTENCEPIECE_LIBRARY OR NOT SENTENCEPIECE_TRAIN_LIBRARY)
  message(FATAL_ERROR "sentencepiece not found: install libsentencepiece-dev (scripts/setup.sh does)")
endif()

# CUDA: on when libtorch itself was built with it.
set(DIFFUSE_HAS_CUDA OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES OR "${TORCH_LIBRARIES}" MATCHES "cuda")
  set(DIFFUSE_HAS_CUDA ON)
endif()

set(DIFFUSE_HAS_NCCL OFF)
if(DIFFUSE_HAS_CUDA AND DIFFUSE_WITH_NCCL)
  find_package(NCCL)
  if(NCCL_FOUND)
    set(DIFFUSE_HAS_NCCL ON)
  endif()
endif()
message(STATUS "diffuse: CUDA support ${DIFFUSE_HAS_CUDA}, NCCL support ${DIFFUSE_HAS_NCCL}")

# The dependencies that stay inside the library. libtorch 2.x ships its own fmt (v12) in its include
# folder and spdlog 1.10 does not compile against it, so fmt 9's folder goes first for our sources.
function(diffuse_link_private_dependencies target)
  get_target_property(fmt_include fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
  target_include_directories(${target} BEFORE PRIVATE ${fmt_include})
  target_include_directories(${target} PRIVATE ${SENTENCEPIECE_INCLUDE_DIR})
  target_link_libraries(${target} PRIVATE spdlog::spdlog fmt::fmt nlohmann_json::nlohmann_json
                        PNG::PNG ${SENTENCEPIECE_LIBRARY} ${SENTENCEPIECE_TRAIN_LIBRARY})
  if(DIFFUSE_HAS_NCCL)
    target_link_libraries(${target} PRIVATE NCCL::NCCL)
  endif()
endfunction()

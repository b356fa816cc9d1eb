# Finds diffuse's dependencies. On Debian they all come from apt (scripts/setup.sh); on the GPU machine
# libtorch (CUDA) and NCCL come from the Python wheels and the rest from unpacked Debian packages.

find_package(Torch REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(PNG REQUIRED)

# No libsentencepiece: Debian's copy exports its own protobuf-lite symbols, which take the place of
# libprotobuf's inside libtorch's dependencies and crash programs at start-up. spiece.model is read
# directly instead (src/tokenizers/sentencepiece_model.cpp).

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
  target_link_libraries(${target} PRIVATE spdlog::spdlog fmt::fmt nlohmann_json::nlohmann_json
                        PNG::PNG)
  if(DIFFUSE_HAS_NCCL)
    target_link_libraries(${target} PRIVATE NCCL::NCCL)
  endif()
endfunction()

#pragma once
// Everything public in diffuse, in one include.

#include "diffuse/dtype.hpp"
#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/configs.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/io/inspect.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/log.hpp"
#include "diffuse/models/attention.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/version.hpp"

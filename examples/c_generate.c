/* c_generate: prompt in, PNG out, through diffuse's C API only (<diffuse/c_api.h>), as an engine
 * written in C (or any language with a C FFI) embeds diffuse.
 *
 *   c_generate --model DIR --prompt "a cat" --output cat.png
 *
 * It builds as C99 against the installed library too:
 *   cc -std=c99 c_generate.c $(pkg-config --cflags --libs diffuse) -o c_generate */

#include <diffuse/c_api.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROMPTS 16

static const char* const kHelp =
    "usage: c_generate --model DIR --prompt TEXT [options]\n"
    "\n"
    "Generates images with a pipeline folder in diffusers' format (FLUX.1, Stable Diffusion, Qwen-Image:\n"
    "model_index.json says which) through diffuse's C API.\n"
    "\n"
    "  --model DIR                 pipeline folder (required)\n"
    "  --prompt TEXT               prompt; repeat for a batch (required)\n"
    "  --negative-prompt TEXT      what the images should not show (SD, Qwen-Image); one, or one per prompt\n"
    "  --height N, --width N       image size, multiples of the family's (default: the family's)\n"
    "  --steps N                   denoising steps (default: the family's, 28 for FLUX.1, 50 for SD)\n"
    "  --guidance X                guidance scale (default: the family's, 3.5 for FLUX.1, 7.5 for SD)\n"
    "  --true-cfg-scale X          Qwen-Image's true CFG scale, with a negative prompt (default 4)\n"
    "  --scheduler NAME            swap the scheduler: a class name or alias (DDIMScheduler, euler, ...)\n"
    "  --seed N                    seed of the CPU generator for the initial noise (default: random)\n"
    "  --max-sequence-length N     text tokens: FLUX.1's T5 at most 512, Qwen-Image at most 1024 (default 512)\n"
    "  --output FILE               PNG path; with several images, FILE's stem gets _0, _1, ... (default out.png)\n"
    "  --dtype float32|bfloat16|float16   weights and compute (default float32)\n"
    "  --device cpu|cuda|cuda:N    where the models run (default cpu)\n"
    "  --quiet                     no progress or timings\n"
    "  --help                      this text\n";

static void fail(const char* message) {
  fprintf(stderr, "c_generate: %s\n", message);
  exit(2);
}

static void fail_with(const char* what, const char* detail) {
  fprintf(stderr, "c_generate: %s%s\n", what, detail);
  exit(2);
}

static long long parse_int(const char* flag, const char* text) {
  char* end = NULL;
  long long value;
  errno = 0;
  value = strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') {
    fprintf(stderr, "c_generate: %s expects an integer, got '%s'\n", flag, text);
    exit(2);
  }
  return value;
}

static double parse_double(const char* flag, const char* text) {
  char* end = NULL;
  double value;
  errno = 0;
  value = strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0') {
    fprintf(stderr, "c_generate: %s expects a number, got '%s'\n", flag, text);
    exit(2);
  }
  return value;
}

/* The library's log lines, on stderr like the C++ programs' (warnings and errors only when quiet). */
static void on_log(void* user_data, diffuse_log_level level, const char* message) {
  static const char* const names[] = {"trace", "debug", "info", "warning", "error", "off"};
  const int quiet = *(const int*)user_data;
  if (quiet && level < DIFFUSE_LOG_WARN) return;
  fprintf(stderr, "[diffuse %s] %s\n", names[level], message);
}

static diffuse_step_action on_step(void* user_data, const diffuse_step_info* info) {
  (void)user_data;
  fprintf(stderr, "\rstep %lld/%lld", (long long)(info->step + 1), (long long)info->num_steps);
  if (info->step + 1 == info->num_steps) fprintf(stderr, "\n");
  return DIFFUSE_CONTINUE;
}

/* "dir/cat.png", 1 -> "dir/cat_1.png" */
static void numbered_path(const char* path, size_t index, char* out, size_t capacity) {
  const char* slash = strrchr(path, '/');
  const char* dot = strrchr(path, '.');
  if (dot == NULL || (slash != NULL && dot < slash)) dot = path + strlen(path);
  snprintf(out, capacity, "%.*s_%lu%s", (int)(dot - path), path, (unsigned long)index, dot);
}

int main(int argc, char** argv) {
  const char* model = NULL;
  const char* prompts[MAX_PROMPTS];
  size_t prompt_count = 0;
  const char* negative_prompts[MAX_PROMPTS];
  size_t negative_prompt_count = 0;
  const char* output = "out.png";
  int quiet = 0;
  int i;
  diffuse_pipeline_options options;
  diffuse_generate_request request;
  diffuse_pipeline_info info;
  diffuse_pipeline* pipeline = NULL;
  diffuse_result* result = NULL;
  diffuse_times times;
  size_t count, n;

  diffuse_pipeline_options_init(&options);
  diffuse_generate_request_init(&request);
  for (i = 1; i < argc; ++i) {
    const char* flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(flag, "--help") == 0) {
      fputs(kHelp, stdout);
      return 0;
    }
    if (strcmp(flag, "--quiet") == 0) {
      quiet = 1;
      continue;
    }
    if (strncmp(flag, "--", 2) != 0) fail_with("unexpected argument ", flag);
    if (value == NULL) fail_with(flag, " expects a value");
    ++i;
    if (strcmp(flag, "--model") == 0) {
      model = value;
    } else if (strcmp(flag, "--prompt") == 0) {
      if (prompt_count == MAX_PROMPTS) fail("too many prompts (at most 16)");
      prompts[prompt_count++] = value;
    } else if (strcmp(flag, "--negative-prompt") == 0) {
      if (negative_prompt_count == MAX_PROMPTS) fail("too many negative prompts (at most 16)");
      negative_prompts[negative_prompt_count++] = value;
    } else if (strcmp(flag, "--true-cfg-scale") == 0) {
      request.true_cfg_scale = parse_double(flag, value);
    } else if (strcmp(flag, "--scheduler") == 0) {
      request.scheduler = value;
    } else if (strcmp(flag, "--height") == 0) {
      request.height = parse_int(flag, value);
    } else if (strcmp(flag, "--width") == 0) {
      request.width = parse_int(flag, value);
    } else if (strcmp(flag, "--steps") == 0) {
      request.num_inference_steps = parse_int(flag, value);
    } else if (strcmp(flag, "--guidance") == 0) {
      request.guidance_scale = parse_double(flag, value);
    } else if (strcmp(flag, "--seed") == 0) {
      request.has_seed = 1;
      request.seed = (uint64_t)parse_int(flag, value);
    } else if (strcmp(flag, "--max-sequence-length") == 0) {
      request.max_sequence_length = parse_int(flag, value);
    } else if (strcmp(flag, "--output") == 0) {
      output = value;
    } else if (strcmp(flag, "--dtype") == 0) {
      options.dtype = value;
    } else if (strcmp(flag, "--device") == 0) {
      options.device = value;
    } else {
      fprintf(stderr, "c_generate: unknown option '%s' (--help lists them)\n", flag);
      return 2;
    }
  }
  if (model == NULL) fail("--model DIR is required (--help for usage)");
  if (prompt_count == 0) fail("--prompt TEXT is required (--help for usage)");

  diffuse_set_log_callback(on_log, &quiet);
  if (diffuse_pipeline_create(model, &options, &pipeline) != DIFFUSE_OK) fail(diffuse_last_error());
  diffuse_pipeline_info_init(&info);
  if (diffuse_pipeline_get_info(pipeline, &info) != DIFFUSE_OK) {
    fprintf(stderr, "c_generate: %s\n", diffuse_last_error());
    diffuse_pipeline_free(pipeline);
    return 1;
  }
  if (!quiet)
    fprintf(stderr, "%s (scheduler %s; default %lldx%lld, %lld steps)\n", info.class_name,
            request.scheduler != NULL ? request.scheduler : info.scheduler, (long long)info.default_width,
            (long long)info.default_height, (long long)info.default_steps);

  request.prompts = prompts;
  request.prompt_count = prompt_count;
  request.negative_prompts = negative_prompt_count > 0 ? negative_prompts : NULL;
  request.negative_prompt_count = negative_prompt_count;
  if (!quiet) request.progress = on_step;
  if (diffuse_generate(pipeline, &request, &result) != DIFFUSE_OK) {
    fprintf(stderr, "c_generate: %s\n", diffuse_last_error());
    diffuse_pipeline_free(pipeline);
    return 1;
  }

  count = diffuse_result_image_count(result);
  for (n = 0; n < count; ++n) {
    diffuse_image_view image;
    char path[4096];
    if (count == 1)
      snprintf(path, sizeof path, "%s", output);
    else
      numbered_path(output, n, path, sizeof path);
    if (diffuse_result_image(result, n, &image) != DIFFUSE_OK ||
        diffuse_save_png(path, image.pixels, image.width, image.height) != DIFFUSE_OK) {
      fprintf(stderr, "c_generate: %s\n", diffuse_last_error());
      diffuse_result_free(result);
      diffuse_pipeline_free(pipeline);
      return 1;
    }
    printf("%s (%lldx%lld)\n", path, (long long)image.width, (long long)image.height);
  }
  if (!quiet && diffuse_result_times(result, &times) == DIFFUSE_OK)
    fprintf(stderr, "diffuse %s: encode %.2f s, denoise %.2f s, decode %.2f s, total %.2f s\n", diffuse_version(),
            times.encode_seconds, times.denoise_seconds, times.decode_seconds, times.total_seconds);

  diffuse_result_free(result);
  diffuse_pipeline_free(pipeline);
  diffuse_set_log_callback(NULL, NULL);
  return 0;
}

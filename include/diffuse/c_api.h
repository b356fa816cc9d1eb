/* diffuse's C API: every pipeline family the library runs (FLUX.1, Stable Diffusion 1.x/2.x, Qwen-Image;
 * the folder's model_index.json picks it) behind a stable C ABI, for engines that are not C++ or are
 * built with another compiler. It compiles as C99 and as C++; no C++ type and no exception crosses it.
 * docs/embedding.md shows it next to the C++ way in. diffuse_pipeline_get_info says which family a
 * pipeline is and what its calls look like (defaults, size multiple, latent layout).
 *
 *   diffuse_pipeline* pipe = NULL;
 *   if (diffuse_pipeline_create("FLUX.1-dev", NULL, &pipe) != DIFFUSE_OK) {
 *     fprintf(stderr, "%s\n", diffuse_last_error());
 *     return 1;
 *   }
 *   diffuse_generate_request request;
 *   diffuse_generate_request_init(&request);
 *   const char* prompt = "a cat";
 *   request.prompts = &prompt;
 *   request.prompt_count = 1;
 *   diffuse_result* result = NULL;
 *   if (diffuse_generate(pipe, &request, &result) == DIFFUSE_OK) {
 *     diffuse_image_view image;
 *     diffuse_result_image(result, 0, &image);
 *     diffuse_save_png("cat.png", image.pixels, image.width, image.height);
 *     diffuse_result_free(result);
 *   }
 *   diffuse_pipeline_free(pipe);
 *
 * ---- Errors ----------------------------------------------------------------------------------------
 * Every function that can fail returns a diffuse_status. A failing call also leaves a message that names
 * what is at fault (file, argument, component) in diffuse_last_error(), which is per thread; a call that
 * succeeds empties it. Every entry point catches every exception inside the library. The status says
 * what kind of failure it was (a bad argument, something missing, a corrupt file, memory, a lost rank,
 * a cancel), so that a caller can react without parsing the message.
 *
 * ---- Ownership ---------------------------------------------------------------------------------------
 * - Everything the caller passes in (strings, option and request structs, prompt arrays, embeddings,
 *   latents, caller-owned output buffers) is borrowed for the duration of the call only; the library
 *   copies what it keeps and never frees it.
 * - diffuse_pipeline* and diffuse_result* belong to the caller once returned; free each exactly once
 *   with diffuse_pipeline_free / diffuse_result_free (both accept NULL).
 * - Views (diffuse_tensor_view, diffuse_image_view) point into their result and stay valid until that
 *   result is freed.
 * - diffuse_last_error()'s string belongs to the calling thread's storage: valid until that thread's
 *   next diffuse call. diffuse_version()'s string is static.
 * - Callback arguments (step info with its latents, log messages) are valid during the callback only.
 * - On failure, out-pointers are set to NULL and caller-owned buffers hold unspecified contents.
 *
 * ---- Threads ----------------------------------------------------------------------------------------
 * - Different pipelines are independent: create, use and free them from any threads at the same time
 *   (each holds its own weights; they share libtorch's intra-op thread pool).
 * - One pipeline may be shared by threads: its calls are serialized by a mutex of its own (a second call
 *   waits until the first returns), because generating mutates the pipeline's scheduler state.
 *   Sharing gives safety, not parallelism; use one pipeline per thread for that.
 * - A callback must not call into the pipeline that is running it: such a call returns
 *   DIFFUSE_ERROR_INVALID_ARGUMENT instead of deadlocking.
 * - diffuse_pipeline_free must not race with another call on the same pipeline (the caller ensures no
 *   call is in flight or waiting).
 * - A result is immutable: its accessors may be called from any threads at once.
 * - Callbacks run on the thread that made the call (progress) or the thread that logs (log).
 *
 * ---- Stop and cancel ---------------------------------------------------------------------------------
 * Two ways to end a generate early, both checked after each denoising step:
 * - A progress callback that returns DIFFUSE_STOP ends the loop after that step: the call still returns
 *   DIFFUSE_OK, its result holds the latents reached so far (decoded to images unless the output is
 *   latent, as the C++ API does), and diffuse_result_interrupted() is 1.
 * - diffuse_pipeline_cancel(pipeline), from the progress callback or from any other thread, makes the
 *   generate in flight return DIFFUSE_ERROR_CANCELLED after the step it is in: no result (out is NULL,
 *   caller buffers hold unspecified contents).
 * Either way the pipeline stays usable. */
#ifndef DIFFUSE_C_API_H
#define DIFFUSE_C_API_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define DIFFUSE_C_EXPORT __attribute__((visibility("default")))
#else
#define DIFFUSE_C_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Versions ------------------------------------------------------------------------------------- */

/* The library's version, "MAJOR.MINOR.PATCH" (static string). */
DIFFUSE_C_EXPORT const char* diffuse_version(void);
/* The same as numbers; any pointer may be NULL. */
DIFFUSE_C_EXPORT void diffuse_version_numbers(int* major, int* minor, int* patch);

/* ---- Errors --------------------------------------------------------------------------------------- */

typedef enum diffuse_status {
  DIFFUSE_OK = 0,
  /* A NULL pointer, a struct_size that does not fit, an unknown name (dtype, device, component), a value
     out of range, an option this build does not support yet, a call from inside a callback. */
  DIFFUSE_ERROR_INVALID_ARGUMENT = 1,
  /* A caller-owned buffer is smaller than the call needs (the diffuse_*_sizes functions give the size).
     Checked before any work. */
  DIFFUSE_ERROR_BUFFER_TOO_SMALL = 2,
  /* Something that should be there is not: the pipeline folder, its model_index.json, a component
     folder, a config or checkpoint file; or a part a result does not have. */
  DIFFUSE_ERROR_NOT_FOUND = 3,
  /* The library refused the call or failed for another reason (diffuse::Error): a request the family
     does not take, a component that is not loaded. The message says what to fix. */
  DIFFUSE_ERROR_FAILED = 4,
  /* Host or device memory ran out, or a request cannot fit in the memory of the device that would run
     it (refused before any work, e.g. 10000x10000 on the CPU). */
  DIFFUSE_ERROR_OUT_OF_MEMORY = 5,
  /* libtorch raised an error (c10::Error), e.g. a device this libtorch was not built for. */
  DIFFUSE_ERROR_TORCH = 6,
  /* Any other exception: a bug; the message has its text. */
  DIFFUSE_ERROR_INTERNAL = 7,
  /* A file is there but malformed: a truncated or corrupt safetensors checkpoint, a config that is not
     JSON or has a value of the wrong type. */
  DIFFUSE_ERROR_CORRUPT_INPUT = 8,
  /* Under context parallelism: a rank died, left or stopped answering, or the rendezvous failed. */
  DIFFUSE_ERROR_DISTRIBUTED = 9,
  /* diffuse_pipeline_cancel stopped the call. */
  DIFFUSE_ERROR_CANCELLED = 10
} diffuse_status;

/* The calling thread's message of its latest failing diffuse call; "" after a call that succeeded. */
DIFFUSE_C_EXPORT const char* diffuse_last_error(void);
/* "DIFFUSE_OK", "DIFFUSE_ERROR_INVALID_ARGUMENT", ... (static string). */
DIFFUSE_C_EXPORT const char* diffuse_status_name(diffuse_status status);

/* ---- Logging -------------------------------------------------------------------------------------- */

typedef enum diffuse_log_level {
  DIFFUSE_LOG_TRACE = 0,
  DIFFUSE_LOG_DEBUG = 1,
  DIFFUSE_LOG_INFO = 2,
  DIFFUSE_LOG_WARN = 3,
  DIFFUSE_LOG_ERROR = 4,
  DIFFUSE_LOG_OFF = 5
} diffuse_log_level;

/* Receives each of the library's log messages (one line, no newline). Calls never overlap; it runs on
   the thread that logs and must not call any diffuse function. */
typedef void (*diffuse_log_callback)(void* user_data, diffuse_log_level level, const char* message);
/* Routes the library's log (stderr by default) to `callback`; NULL restores stderr. Process-wide. */
DIFFUSE_C_EXPORT diffuse_status diffuse_set_log_callback(diffuse_log_callback callback, void* user_data);
/* The least severe level that is logged (default: $DIFFUSE_LOG_LEVEL, else info). Process-wide. */
DIFFUSE_C_EXPORT diffuse_status diffuse_set_log_level(diffuse_log_level level);

/* ---- Versioned structs ---------------------------------------------------------------------------
   Structs that may grow start with `struct_size`, which the caller sets to sizeof(the struct) as its
   header declares it. The *_init functions do: they are inline here, so they pass the caller's own
   sizeof to the library's *_init_sized, which writes defaults into exactly that many bytes (never past
   the end of an older, smaller struct). The library reads only the fields that struct_size
   covers, so a program built against an older header keeps working with a newer library; a newer
   program on an older library works as long as the fields the library does not know are zero. For
   structs the library fills (info, sizes), it writes only the fields that struct_size covers. */

/* ---- Pipelines ------------------------------------------------------------------------------------ */

typedef struct diffuse_pipeline diffuse_pipeline;

typedef struct diffuse_pipeline_options {
  size_t struct_size;
  /* Weights and compute: "float32" (also NULL or ""), "bfloat16", "float16". */
  const char* dtype;
  /* Where the models run: "cpu" (also NULL or ""), "cuda", "cuda:1". */
  const char* device;
  /* model_index.json component names not to load, e.g. {"transformer", "vae"} to encode prompts only. */
  const char* const* skip;
  size_t skip_count;
  /* Placement over devices, as diffusers' device_map: NULL or "" for none, "balanced", ... */
  const char* device_map;
  /* Memory budgets for device_map, "DEVICE=SIZE" pairs separated by commas:
     "cuda:0=16GB,cuda:1=16GB,cpu=64GB". NULL or "" for none. */
  const char* max_memory;
  /* Context parallelism over each image's tokens (0 or 1: none; docs/context_parallel.md). Above 1, this
     process is one rank of a world started by torchrun or diffuse-launch (RANK, WORLD_SIZE, LOCAL_RANK,
     MASTER_ADDR, MASTER_PORT; the pipeline runs on cuda:LOCAL_RANK when device is "cuda"). Every rank
     creates the pipeline with the same options and makes the same calls, with the same seed; rank 0
     gets the images, the others the latents only (their image buffers are left as they were). */
  int32_t ring_degree;
  int32_t ulysses_degree;
  /* The transformer's attention kernel: NULL or "" for "auto"; "math", "native", "flash", "efficient",
     "cudnn" (the fused ones need CUDA). */
  const char* attention_backend;
  /* ---- third version ---- */
  /* CFG parallelism (0 or 1: none; 2: the unconditional and the conditional pass of guidance on two
     halves of the ranks, each half ring_degree x ulysses_degree ranks; docs/context_parallel.md). As
     with ring/Ulysses, above 1 this process is one rank of a launched world. Stable Diffusion takes
     cfg_degree 2 alone; FLUX.1 refuses it (its guidance is distilled, it has no unconditional pass). */
  int32_t cfg_degree;
} diffuse_pipeline_options;

/* Defaults: float32 on the CPU, every component, no device map, no parallelism. */
DIFFUSE_C_EXPORT void diffuse_pipeline_options_init_sized(diffuse_pipeline_options* options, size_t struct_size);
static inline void diffuse_pipeline_options_init(diffuse_pipeline_options* options) {
  diffuse_pipeline_options_init_sized(options, sizeof *options);
}

/* Loads the pipeline folder saved by diffusers (model_index.json and its component folders), of any
   family the library runs: model_index.json's _class_name picks it (FluxPipeline, StableDiffusionPipeline,
   QwenImagePipeline). `options` may be NULL for the defaults. On failure *out is NULL. */
DIFFUSE_C_EXPORT diffuse_status diffuse_pipeline_create(const char* folder, const diffuse_pipeline_options* options,
                                                        diffuse_pipeline** out);
/* Frees the pipeline and its weights. NULL is ignored. */
DIFFUSE_C_EXPORT void diffuse_pipeline_free(diffuse_pipeline* pipeline);
/* Asks the generate running on `pipeline` to stop after its current denoising step; that call then
   returns DIFFUSE_ERROR_CANCELLED. Callable from the call's own progress callback and from any other
   thread (it takes no lock and never waits). A cancel applies to the generate in flight: a generate
   that starts later clears it. Does nothing when no generate is running. */
DIFFUSE_C_EXPORT diffuse_status diffuse_pipeline_cancel(diffuse_pipeline* pipeline);

typedef struct diffuse_pipeline_info {
  size_t struct_size;
  int64_t vae_scale_factor;       /* 8 for FLUX.1, SD and Qwen-Image */
  int64_t num_channels_latents;   /* 16 for FLUX.1, 4 for SD; packed latents have 4 times this per token */
  /* prompt_embeds' last dimension: the transformer's joint_attention_dim (FLUX.1: T5 width; Qwen-Image:
     the text model's width), or the UNet's cross_attention_dim (SD). */
  int64_t joint_attention_dim;
  int64_t pooled_projection_dim;  /* pooled_prompt_embeds' last dimension (FLUX.1's CLIP width; else 0) */
  int64_t default_height;         /* used when a request's height is 0 */
  int64_t default_width;
  int32_t guidance_embeds;        /* 1 when the transformer takes guidance_scale (FLUX.1-dev) */
  char dtype[16];                 /* "float32", ... */
  char device[32];                /* "cpu", "cuda:0", ... */
  int32_t parallel_rank;          /* this process's rank under cfg/context parallelism (0: gets images) */
  int32_t parallel_world_size;    /* 1 without context parallelism */
  /* ---- second version: the family ---- */
  char class_name[64];            /* "FluxPipeline", "StableDiffusionPipeline", "QwenImagePipeline" */
  int64_t size_multiple;          /* height and width are multiples of it (16 FLUX.1/Qwen-Image, 8 SD) */
  int64_t default_steps;          /* used when a request's num_inference_steps is 0 (28, 50, 50) */
  /* used when a request's guidance_scale is negative (FLUX.1 3.5, SD 7.5); for Qwen-Image this is the
     default of true_cfg_scale (4) */
  double default_guidance_scale;
  /* 1: latents are packed 2x2 patches, [batch, latent_tokens, latent_channels] (FLUX.1, Qwen-Image);
     0: latents are [batch, num_channels_latents, height / vae_scale_factor, width / vae_scale_factor]
     (SD). diffuse_decode_sizes (or diffuse_generate_sizes) gives the shape for a height, width and
     batch in diffuse_sizes.latents_shape. */
  int32_t packed_latents;
  int32_t uses_negative_prompt;   /* 1 when the family reads negative prompts (SD, Qwen-Image) */
  char scheduler[64];             /* the scheduler's class name ("" when it is not loaded) */
} diffuse_pipeline_info;

/* Zeroes `info` and sets its struct_size to the caller's sizeof, ready for diffuse_pipeline_get_info. */
static inline void diffuse_pipeline_info_init(diffuse_pipeline_info* info) {
  const diffuse_pipeline_info zero = {0};
  *info = zero;
  info->struct_size = sizeof *info;
}
DIFFUSE_C_EXPORT diffuse_status diffuse_pipeline_get_info(diffuse_pipeline* pipeline, diffuse_pipeline_info* info);
/* *loaded = 1 when the component ("transformer", "vae", "text_encoder", ...) is loaded. */
DIFFUSE_C_EXPORT diffuse_status diffuse_pipeline_has(diffuse_pipeline* pipeline, const char* component, int* loaded);
/* Frees one component's memory (staged flows: encode, release the text encoders, then generate). */
DIFFUSE_C_EXPORT diffuse_status diffuse_pipeline_release(diffuse_pipeline* pipeline, const char* component);

/* ---- Requests ------------------------------------------------------------------------------------- */

typedef enum diffuse_output_type {
  DIFFUSE_OUTPUT_IMAGE = 0,  /* RGB8 images, and the [B, 3, H, W] float tensor in [0, 1] they came from */
  DIFFUSE_OUTPUT_LATENT = 1, /* the final packed latents only; the VAE does not run */
  DIFFUSE_OUTPUT_TENSOR = 2  /* the [B, 3, H, W] float tensor in [0, 1] (diffusers' output_type="pt") */
} diffuse_output_type;

/* What a progress callback returns. */
typedef enum diffuse_step_action {
  DIFFUSE_CONTINUE = 0,
  DIFFUSE_STOP = 1 /* any value but DIFFUSE_CONTINUE stops */
} diffuse_step_action;

typedef struct diffuse_step_info {
  int64_t step;      /* 0-based, of the step just done */
  int64_t num_steps;
  double timestep;   /* in [0, 1000] */
  /* Only when the request sets progress_latents: the latents after this step, float32
     [latents_shape[0], [1], [2]], valid during the callback. Otherwise NULL. Packed latents (FLUX.1,
     Qwen-Image) are [batch, tokens, channels]; SD's [batch, C, h, w] come as [batch, C, h * w], the same
     floats in the same order (diffuse_sizes.latents_shape has h and w). */
  const float* latents;
  int64_t latents_shape[3];
} diffuse_step_info;

/* Called after each denoising step. */
typedef diffuse_step_action (*diffuse_progress_callback)(void* user_data, const diffuse_step_info* info);

typedef struct diffuse_encode_request {
  size_t struct_size;
  const char* const* prompts;    /* to CLIP; prompt_count of them */
  size_t prompt_count;
  const char* const* prompts_2;  /* to T5; NULL (and 0) for the same as prompts */
  size_t prompt_2_count;
  int64_t num_images_per_prompt; /* default 1 */
  /* FLUX.1: T5 tokens, at most 512; Qwen-Image: text tokens after its template, at most 1024; SD: not
     read (CLIP's 77). Default 512. */
  int64_t max_sequence_length;
  /* ---- second version ---- */
  /* SD, Qwen-Image: the negative prompts (one per prompt, or one for all; NULL and 0 for ""), encoded
     when do_classifier_free_guidance is nonzero into DIFFUSE_TENSOR_NEGATIVE_PROMPT_EMBEDS. */
  const char* const* negative_prompts;
  size_t negative_prompt_count;
  int32_t do_classifier_free_guidance;
} diffuse_encode_request;

DIFFUSE_C_EXPORT void diffuse_encode_request_init_sized(diffuse_encode_request* request, size_t struct_size);
static inline void diffuse_encode_request_init(diffuse_encode_request* request) {
  diffuse_encode_request_init_sized(request, sizeof *request);
}

typedef struct diffuse_generate_request {
  size_t struct_size;
  /* Prompts, or embeddings (from diffuse_encode), not both. */
  const char* const* prompts;
  size_t prompt_count;
  const char* const* prompts_2;  /* to T5; NULL (and 0) for the same as prompts */
  size_t prompt_2_count;
  /* float32, row-major: prompt_embeds [embeds_batch, embeds_sequence_length, joint_attention_dim] and
     pooled_prompt_embeds [embeds_batch, pooled_projection_dim] (see diffuse_pipeline_info). */
  const float* prompt_embeds;
  const float* pooled_prompt_embeds;
  int64_t embeds_batch;
  int64_t embeds_sequence_length;
  int64_t num_images_per_prompt; /* default 1; images of one prompt stay together */
  int64_t height;                /* 0: the pipeline's default (1024 for FLUX.1); multiples of 16 */
  int64_t width;
  int32_t round_size;            /* nonzero: round a size that is not a multiple down, as diffusers does */
  int64_t num_inference_steps;   /* default 28 */
  double guidance_scale;         /* default 3.5 */
  int32_t has_seed;              /* nonzero: initial noise from a CPU generator seeded with `seed` (the
                                    same noise as diffusers); zero: a random seed */
  uint64_t seed;
  /* Initial packed latents, float32 [batch, latent_tokens, latent_channels] (diffuse_generate_sizes),
     or NULL to draw them. latents_count must be exactly that many floats. */
  const float* latents;
  size_t latents_count;
  int64_t max_sequence_length;   /* default 512 */
  diffuse_output_type output_type; /* default DIFFUSE_OUTPUT_IMAGE */
  diffuse_progress_callback progress;
  void* progress_user_data;
  int32_t progress_latents;      /* nonzero: pass each step's latents to `progress` (a copy per step) */
  int32_t progress_bar;          /* nonzero: draw a progress bar on stderr (default 0) */
  /* ---- second version ---- */
  /* SD: what the images should not show (classifier-free guidance's unconditional half); Qwen-Image:
     the same for true CFG, which runs only when negative prompts are given. One per prompt or one for
     all; NULL and 0 for none. FLUX.1 refuses them. */
  const char* const* negative_prompts;
  size_t negative_prompt_count;
  /* Qwen-Image's true CFG scale; negative (the default): the family's (4). Others refuse a value. */
  double true_cfg_scale;
  /* A scheduler class name or alias ("DDIMScheduler", "euler", ...) to swap in before the call, with
     the current scheduler's config, as diffusers' pipe.scheduler = X.from_config(pipe.scheduler.config);
     the pipeline keeps it for later calls. NULL or "": keep the current one. */
  const char* scheduler;
  /* With prompt_embeds, float32 row-major: negative_prompt_embeds [embeds_batch,
     negative_embeds_sequence_length (0: embeds_sequence_length), joint_attention_dim] (SD under
     guidance, Qwen-Image's true CFG), and Qwen-Image's int64 masks (1 = a valid token), one row per
     embedding row: prompt_embeds_mask [embeds_batch, embeds_sequence_length] and
     negative_prompt_embeds_mask [embeds_batch, negative_embeds_sequence_length]. NULL: not given (a NULL
     mask means every position is valid). */
  const float* negative_prompt_embeds;
  int64_t negative_embeds_sequence_length;
  const int64_t* prompt_embeds_mask;
  const int64_t* negative_prompt_embeds_mask;
} diffuse_generate_request;

/* The family's defaults: num_inference_steps 0 and guidance_scale -1 stand for the family's (28 and 3.5
   for FLUX.1, 50 and 7.5 for SD, 50 and none for Qwen-Image: diffuse_pipeline_info says them), 1 image
   per prompt, max_sequence_length 512, image output, default size, random seed, no callback, no
   negative prompts, true_cfg_scale -1 (the family's), the current scheduler. */
DIFFUSE_C_EXPORT void diffuse_generate_request_init_sized(diffuse_generate_request* request, size_t struct_size);
static inline void diffuse_generate_request_init(diffuse_generate_request* request) {
  diffuse_generate_request_init_sized(request, sizeof *request);
}

/* ---- Library-owned results --------------------------------------------------------------------- */

typedef struct diffuse_result diffuse_result;

/* prompt -> embeddings (needs the family's tokenizers and text encoders). The result has
   DIFFUSE_TENSOR_PROMPT_EMBEDS, and as the family makes them DIFFUSE_TENSOR_POOLED_PROMPT_EMBEDS
   (FLUX.1), DIFFUSE_TENSOR_NEGATIVE_PROMPT_EMBEDS (SD and Qwen-Image with do_classifier_free_guidance)
   and the masks (Qwen-Image, when prompts differ in length). */
DIFFUSE_C_EXPORT diffuse_status diffuse_encode(diffuse_pipeline* pipeline, const diffuse_encode_request* request,
                                               diffuse_result** out);
/* The whole call, or the stages the request leaves (embeddings in; latents out). The result has
   DIFFUSE_TENSOR_LATENTS always, images and DIFFUSE_TENSOR_IMAGE as the output type says. */
DIFFUSE_C_EXPORT diffuse_status diffuse_generate(diffuse_pipeline* pipeline, const diffuse_generate_request* request,
                                                 diffuse_result** out);
/* Latents as generate returns them (float32; packed [batch, latent_tokens, latent_channels], or SD's
   [batch, C, height / 8, width / 8]: diffuse_decode_sizes says) of height x width images -> images and
   DIFFUSE_TENSOR_IMAGE. latents_count must be exactly diffuse_sizes.latents_count. */
DIFFUSE_C_EXPORT diffuse_status diffuse_decode(diffuse_pipeline* pipeline, const float* latents, size_t latents_count,
                                               int64_t batch, int64_t height, int64_t width, diffuse_result** out);

typedef enum diffuse_tensor_name {
  DIFFUSE_TENSOR_LATENTS = 0,              /* packed [B, tokens, channels], or SD's [B, C, h, w] */
  DIFFUSE_TENSOR_IMAGE = 1,                /* [B, 3, H, W] in [0, 1] */
  DIFFUSE_TENSOR_PROMPT_EMBEDS = 2,        /* [B, sequence, joint_attention_dim] */
  DIFFUSE_TENSOR_POOLED_PROMPT_EMBEDS = 3, /* [B, pooled_projection_dim] */
  DIFFUSE_TENSOR_NEGATIVE_PROMPT_EMBEDS = 4,       /* [B, sequence, joint_attention_dim] */
  DIFFUSE_TENSOR_PROMPT_EMBEDS_MASK = 5,           /* [B, sequence], 1.0 where a token is valid */
  DIFFUSE_TENSOR_NEGATIVE_PROMPT_EMBEDS_MASK = 6   /* as the generate request's int64 masks, as floats */
} diffuse_tensor_name;

/* A float32 row-major array inside a result. */
typedef struct diffuse_tensor_view {
  const float* data;
  int64_t shape[4];
  int32_t ndim;
  size_t count;  /* elements */
} diffuse_tensor_view;

/* An RGB8 image inside a result: height rows of width * 3 bytes. */
typedef struct diffuse_image_view {
  const uint8_t* pixels;
  int64_t width;
  int64_t height;
  size_t size;  /* bytes: width * height * 3 */
} diffuse_image_view;

typedef struct diffuse_times {
  double encode_seconds;
  double denoise_seconds;
  double decode_seconds;
  double total_seconds;
} diffuse_times;

/* DIFFUSE_ERROR_NOT_FOUND when the result does not have that tensor (e.g. an image of latent output). */
DIFFUSE_C_EXPORT diffuse_status diffuse_result_tensor(const diffuse_result* result, diffuse_tensor_name name,
                                                      diffuse_tensor_view* view);
/* Images in the result (0 unless the output is images). */
DIFFUSE_C_EXPORT size_t diffuse_result_image_count(const diffuse_result* result);
DIFFUSE_C_EXPORT diffuse_status diffuse_result_image(const diffuse_result* result, size_t index,
                                                     diffuse_image_view* view);
/* 1 when a progress callback stopped the loop before its last step. */
DIFFUSE_C_EXPORT int diffuse_result_interrupted(const diffuse_result* result);
DIFFUSE_C_EXPORT diffuse_status diffuse_result_times(const diffuse_result* result, diffuse_times* times);
/* NULL is ignored. */
DIFFUSE_C_EXPORT void diffuse_result_free(diffuse_result* result);

/* ---- Caller-owned buffers ---------------------------------------------------------------------------
   Ask for the sizes, allocate, then call the *_into function with the buffers: nothing is allocated for
   the caller and nothing needs freeing. Counts are elements (floats, or bytes for images). */

typedef struct diffuse_sizes {
  size_t struct_size;
  int64_t batch;                 /* images, or embedding rows */
  int64_t height;                /* of the images, after defaults and rounding */
  int64_t width;
  int64_t latent_tokens;         /* (height / 16) * (width / 16) for FLUX.1 and Qwen-Image */
  int64_t latent_channels;       /* num_channels_latents * 4 (packed) */
  int64_t sequence_length;       /* prompt_embeds' tokens */
  int64_t joint_attention_dim;
  int64_t pooled_projection_dim;
  size_t latents_count;          /* batch * latent_tokens * latent_channels floats */
  size_t image_bytes;            /* batch * height * width * 3 bytes (0 when the call makes no images) */
  size_t image_tensor_count;     /* batch * 3 * height * width floats (0 when the call makes none) */
  size_t prompt_embeds_count;    /* encode: batch * sequence_length * joint_attention_dim floats */
  size_t pooled_prompt_embeds_count; /* encode: batch * pooled_projection_dim floats */
  /* ---- second version ---- */
  /* The latents' whole shape: packed [batch, latent_tokens, latent_channels] (ndim 3), or SD's [batch,
     num_channels_latents, height / vae_scale_factor, width / vae_scale_factor] (ndim 4, and then
     latent_tokens is h * w and latent_channels num_channels_latents). */
  int32_t latents_ndim;
  int64_t latents_shape[4];
} diffuse_sizes;

/* Buffers for the outputs wanted; NULL for those not wanted (at least one). Images are written one
   after another, each height rows of width * 3 bytes. A buffer the call cannot fill (images of latent
   output, embeddings of generate) is an error, as is one that is too small; both are checked first. */
typedef struct diffuse_buffers {
  size_t struct_size;
  float* latents;
  size_t latents_count;
  uint8_t* images;
  size_t image_bytes;
  float* image_tensor;
  size_t image_tensor_count;
  float* prompt_embeds;
  size_t prompt_embeds_count;
  float* pooled_prompt_embeds;
  size_t pooled_prompt_embeds_count;
} diffuse_buffers;

DIFFUSE_C_EXPORT void diffuse_sizes_init_sized(diffuse_sizes* sizes, size_t struct_size);
static inline void diffuse_sizes_init(diffuse_sizes* sizes) {
  diffuse_sizes_init_sized(sizes, sizeof *sizes);
}
DIFFUSE_C_EXPORT void diffuse_buffers_init_sized(diffuse_buffers* buffers, size_t struct_size);
static inline void diffuse_buffers_init(diffuse_buffers* buffers) {
  diffuse_buffers_init_sized(buffers, sizeof *buffers);
}

/* Sizes of what the call would write, without running any model. diffuse_encode_sizes and
   diffuse_encode_into are FLUX.1's (other families' sequence lengths depend on the prompts: use
   diffuse_encode). */
DIFFUSE_C_EXPORT diffuse_status diffuse_encode_sizes(diffuse_pipeline* pipeline, const diffuse_encode_request* request,
                                                     diffuse_sizes* sizes);
DIFFUSE_C_EXPORT diffuse_status diffuse_generate_sizes(diffuse_pipeline* pipeline,
                                                       const diffuse_generate_request* request, diffuse_sizes* sizes);
DIFFUSE_C_EXPORT diffuse_status diffuse_decode_sizes(diffuse_pipeline* pipeline, int64_t batch, int64_t height,
                                                     int64_t width, diffuse_sizes* sizes);

/* As diffuse_encode / diffuse_generate / diffuse_decode, into the caller's buffers. `interrupted`
   (may be NULL) is set to 1 when a progress callback stopped the loop. */
DIFFUSE_C_EXPORT diffuse_status diffuse_encode_into(diffuse_pipeline* pipeline, const diffuse_encode_request* request,
                                                    const diffuse_buffers* buffers);
DIFFUSE_C_EXPORT diffuse_status diffuse_generate_into(diffuse_pipeline* pipeline,
                                                      const diffuse_generate_request* request,
                                                      const diffuse_buffers* buffers, int* interrupted);
DIFFUSE_C_EXPORT diffuse_status diffuse_decode_into(diffuse_pipeline* pipeline, const float* latents,
                                                    size_t latents_count, int64_t batch, int64_t height, int64_t width,
                                                    const diffuse_buffers* buffers);

/* ---- Images --------------------------------------------------------------------------------------- */

/* Writes RGB8 pixels (height rows of width * 3 bytes) as a PNG; the file appears whole or not at all. */
DIFFUSE_C_EXPORT diffuse_status diffuse_save_png(const char* path, const uint8_t* pixels, int64_t width,
                                                 int64_t height);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* DIFFUSE_C_API_H */

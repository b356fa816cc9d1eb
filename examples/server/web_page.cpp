#include "server/web_page.hpp"

namespace diffuse::server {

const std::string& web_page_html() {
  static const std::string page = R"HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>diffuse-server</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; }
  form { display: grid; grid-template-columns: 8rem 1fr; gap: .5rem 1rem; align-items: center; }
  textarea { width: 100%; min-height: 4rem; font: inherit; }
  input[type=number] { width: 7rem; }
  button { grid-column: 2; justify-self: start; padding: .4rem 1.2rem; font: inherit; }
  progress { width: 100%; height: 1rem; margin-top: 1rem; }
  #status { margin: .5rem 0; min-height: 1.2rem; }
  #status.error { color: #b00020; }
  #image { max-width: 100%; display: block; margin-top: 1rem; image-rendering: pixelated; }
  small { color: #666; }
</style>
</head>
<body>
<h1>diffuse-server</h1>
<p><small id="model">loading the model's description...</small></p>
<form id="form">
  <label for="prompt">Prompt</label><textarea id="prompt" required>a photo of a cat</textarea>
  <label for="width">Width</label><input id="width" type="number" min="8" step="8">
  <label for="height">Height</label><input id="height" type="number" min="8" step="8">
  <label for="steps">Steps</label><input id="steps" type="number" min="1">
  <label for="seed">Seed</label><input id="seed" type="number" min="0" placeholder="random">
  <label for="key">API key</label><input id="key" type="password" placeholder="only if the server wants one">
  <button id="generate" type="submit">Generate</button>
</form>
<progress id="progress" max="1" value="0"></progress>
<div id="status"></div>
<img id="image" alt="">
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function headers() {
  const h = { "Content-Type": "application/json" };
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}
async function describeModel() {
  const res = await fetch("/v1/models", { headers: headers() });
  if (!res.ok) { $("model").textContent = "model: (needs the API key)"; return; }
  const m = (await res.json()).data[0];
  $("model").textContent = m.family + " from " + m.id + ", " + m.dtype + " on " + m.devices.join(", ");
  if (!$("width").value) $("width").value = m.default_width;
  if (!$("height").value) $("height").value = m.default_height;
  if (!$("steps").value) $("steps").value = m.default_steps;
  // min is the base of step: both at the multiple, so every multiple is valid.
  $("width").min = $("height").min = $("width").step = $("height").step = m.size_multiple;
}
async function follow(id) {
  for (;;) {
    const res = await fetch("/v1/jobs/" + id, { headers: headers() });
    const job = await res.json();
    if (!res.ok) throw new Error(job.error ? job.error.message : "HTTP " + res.status);
    $("progress").max = Math.max(1, job.total_steps);
    $("progress").value = job.step;
    if (job.state === "queued") status("queued, position " + job.queue_position);
    if (job.state === "running") status("step " + job.step + " of " + job.total_steps);
    if (job.state === "succeeded") return job;
    if (job.state === "failed" || job.state === "cancelled") throw new Error(job.state + ": " + job.error);
    await new Promise((r) => setTimeout(r, 200));
  }
}
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("generate").disabled = true;
  $("progress").value = 0;
  const body = { prompt: $("prompt").value, size: $("width").value + "x" + $("height").value,
                 steps: Number($("steps").value) };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  try {
    status("submitting");
    const res = await fetch("/v1/jobs", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const accepted = await res.json();
    if (!res.ok) throw new Error(accepted.error ? accepted.error.message : "HTTP " + res.status);
    const job = await follow(accepted.id);
    $("image").src = "data:image/png;base64," + job.images[0];
    $("image").alt = body.prompt;
    $("image").dataset.seed = job.parameters.seed;
    status("done: " + job.width + "x" + job.height + ", seed " + job.parameters.seed);
  } catch (error) {
    status(error.message, true);
  } finally {
    $("generate").disabled = false;
  }
});
describeModel().catch((error) => status(error.message, true));
</script>
</body>
</html>
)HTML";
  return page;
}

}  // namespace diffuse::server

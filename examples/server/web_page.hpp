#pragma once
// The page at GET /: a form (prompt, size, steps, seed, and the API key when the server wants one),
// a progress bar and the image, in one HTML document with its script and style inline (no external
// assets, so it works on a machine with no internet). It submits POST /v1/jobs and follows the job
// with GET /v1/jobs/{id}.

#include <string>

namespace diffuse::server {

const std::string& web_page_html();

}  // namespace diffuse::server

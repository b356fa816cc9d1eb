#pragma once
// A one-line progress bar on stderr for the denoising loop ("[#####     ] 14/28 0.41 s/it"),
// drawn only when asked (by default when stderr is a terminal).

#include <chrono>
#include <cstdint>

namespace diffuse {

class ProgressBar {
 public:
  ProgressBar(int64_t total, bool enabled);
  ~ProgressBar();  // ends the line
  void advance();

 private:
  void draw() const;
  int64_t total_;
  int64_t done_ = 0;
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace diffuse

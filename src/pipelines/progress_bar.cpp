#include "diffuse/pipelines/progress_bar.hpp"

#include <cstdio>
#include <string>

namespace diffuse {

ProgressBar::ProgressBar(int64_t total, bool enabled)
    : total_(total), enabled_(enabled && total > 0), start_(std::chrono::steady_clock::now()) {
  if (enabled_) draw();
}

ProgressBar::~ProgressBar() {
  if (enabled_) std::fputc('\n', stderr);
}

void ProgressBar::advance() {
  ++done_;
  if (enabled_) draw();
}

void ProgressBar::draw() const {
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * done_ / total_);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, ' ');
  if (done_ > 0)
    std::fprintf(stderr, "\r[%s] %lld/%lld %.2f s/it", bar.c_str(), static_cast<long long>(done_),
                 static_cast<long long>(total_), elapsed / static_cast<double>(done_));
  else
    std::fprintf(stderr, "\r[%s] 0/%lld", bar.c_str(), static_cast<long long>(total_));
  std::fflush(stderr);
}

}  // namespace diffuse

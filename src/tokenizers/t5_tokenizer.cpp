#include "diffuse/tokenizers/t5_tokenizer.hpp"

#include <limits>
#include <unordered_map>

#include "diffuse/error.hpp"
#include "tokenizers/precompiled_charsmap.hpp"
#include "tokenizers/sentencepiece_model.hpp"
#include "tokenizers/tokenizer_common.hpp"
#include "tokenizers/unicode.hpp"

namespace diffuse {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // ▁ (U+2581), SentencePiece's word start
// tokenizers' Unigram scores a character that no piece covers this far below the worst piece.
constexpr double kUnknownPenalty = 10.0;

}  // namespace

struct T5Tokenizer::Impl {
  tokenizers::PrecompiledCharsmap charsmap;
  // The unigram model's vocabulary as transformers builds it: spiece.model's pieces, then the
  // extra ids (score 0). Every entry can match the text, control pieces included.
  std::unordered_map<std::string, int64_t> ids;
  std::vector<double> scores;
  // The same pieces as a byte trie, so that walking a word from one position meets every piece that
  // starts there with one lookup per byte (hashing every prefix instead is cubic in a long piece).
  std::unordered_map<uint64_t, uint32_t> edges;  // (node << 8 | byte) -> child node
  std::vector<int64_t> piece_at{-1};             // node -> piece id, -1 where no piece ends
  double unknown_score = 0;
  int64_t unk_id = 2;
  tokenizers::SpecialTokens special;

  void tokenize_segment(std::string_view text, std::vector<int64_t>& out) const;
  void unigram(std::string_view word, std::vector<int64_t>& out) const;
};

T5Tokenizer T5Tokenizer::from_pretrained(const std::filesystem::path& folder) {
  const std::filesystem::path model_file = folder / "spiece.model";
  const auto model = tokenizers::SentencePieceModel::load(model_file);
  if (model.model_type != tokenizers::SentencePieceModel::ModelType::Unigram)
    throw Error(model_file.string() + ": T5Tokenizer needs a unigram SentencePiece model");
  if (model.byte_fallback)
    throw Error(model_file.string() + ": byte-fallback SentencePiece models are not supported");

  auto impl = std::make_shared<Impl>();
  impl->charsmap = tokenizers::PrecompiledCharsmap(model.precompiled_charsmap, model_file.string());

  const auto config = tokenizers::TokenizerConfig::load(folder);
  const auto pieces = static_cast<int64_t>(model.pieces.size());
  const int64_t extra_ids = config.integer("extra_ids", 100);
  // T5 has 100; a count in the millions is a damaged file (and would take minutes and gigabytes).
  constexpr int64_t kMaxExtraIds = 1 << 16;
  if (extra_ids < 0 || extra_ids > kMaxExtraIds)
    throw Error(config.file.string() + ": 'extra_ids' is " + std::to_string(extra_ids) + ", outside [0, " +
                std::to_string(kMaxExtraIds) + "]");
  impl->scores.resize(pieces + extra_ids);
  double worst = std::numeric_limits<double>::infinity();
  const auto add_piece = [&](const std::string& piece, int64_t id, double score) {
    impl->ids[piece] = id;
    impl->scores[id] = score;
    uint32_t node = 0;
    for (unsigned char byte : piece) {
      auto [edge, added] = impl->edges.emplace((uint64_t{node} << 8) | byte, static_cast<uint32_t>(impl->piece_at.size()));
      if (added) impl->piece_at.push_back(-1);
      node = edge->second;
    }
    impl->piece_at[node] = id;  // a later duplicate wins, as in `ids`
    worst = std::min(worst, score);
  };
  for (int64_t id = 0; id < pieces; ++id) add_piece(model.pieces[id].text, id, model.pieces[id].score);
  for (int64_t i = 0; i < extra_ids; ++i) {
    const std::string token = "<extra_id_" + std::to_string(i) + ">";
    add_piece(token, pieces + extra_ids - 1 - i, 0.0);
    impl->special.add(token, pieces + extra_ids - 1 - i);
  }
  impl->unknown_score = worst - kUnknownPenalty;
  impl->unk_id = model.unk_id;

  // Special tokens: transformers' T5Tokenizer defaults, overridden by tokenizer_config.json. Each
  // must be a piece of the model or an extra id.
  const std::string eos = config.token("eos_token").value_or("</s>");
  const std::string pad = config.token("pad_token").value_or("<pad>");
  const std::string unk = config.token("unk_token").value_or("<unk>");
  std::vector<std::string> specials = {pad, eos, unk};
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"})
    for (auto& token : config.token_list(key)) specials.push_back(token);
  for (const auto& token : specials) {
    auto it = impl->ids.find(token);
    if (it == impl->ids.end())
      throw Error(config.file.string() + ": special token '" + token + "' is neither a piece of " +
                  model_file.string() + " nor an extra id");
    impl->special.add(token, it->second);
  }

  T5Tokenizer tokenizer;
  tokenizer.eos_id = impl->ids.at(eos);
  tokenizer.pad_id = impl->ids.at(pad);
  tokenizer.unk_id = impl->unk_id;
  tokenizer.model_max_length = config.integer("model_max_length", 512);
  tokenizer.impl_ = std::move(impl);
  return tokenizer;
}

// The best segmentation of `word` (which starts with ▁) into pieces, as tokenizers' Unigram finds
// it: the path of highest total score (scores added in double precision; the first path found
// wins a tie), a character no piece covers costing the unknown score, consecutive unknowns fused
// into one <unk>.
void T5Tokenizer::Impl::unigram(std::string_view word, std::vector<int64_t>& out) const {
  struct Node {
    double score = 0;
    std::ptrdiff_t start = -1;  // where the best path's last piece starts; -1: not reached yet
    int64_t id = 0;
  };
  std::vector<Node> best(word.size() + 1);
  for (size_t start = 0; start < word.size();) {
    const double score_here = best[start].score;
    // Ill-formed UTF-8 (a lead byte near the end) must not step past the word.
    const size_t char_length =
        std::min(unicode::utf8_length(static_cast<unsigned char>(word[start])), word.size() - start);
    bool covered = false;
    uint32_t trie = 0;
    for (size_t length = 1; start + length <= word.size(); ++length) {
      const auto edge = edges.find((uint64_t{trie} << 8) | static_cast<unsigned char>(word[start + length - 1]));
      if (edge == edges.end()) break;
      trie = edge->second;
      const int64_t id = piece_at[trie];
      if (id < 0) continue;
      Node& node = best[start + length];
      const double candidate = score_here + scores[static_cast<size_t>(id)];
      if (node.start < 0 || candidate > node.score) node = {candidate, static_cast<std::ptrdiff_t>(start), id};
      if (length == char_length) covered = true;
    }
    if (!covered) {
      Node& node = best[start + char_length];
      const double candidate = score_here + unknown_score;
      if (node.start < 0 || candidate > node.score)
        node = {candidate, static_cast<std::ptrdiff_t>(start), unk_id};
    }
    start += char_length;
  }
  std::vector<int64_t> reversed;
  for (size_t end = word.size(); end > 0;) {
    const Node& node = best[end];
    if (!(node.id == unk_id && !reversed.empty() && reversed.back() == unk_id)) reversed.push_back(node.id);
    end = static_cast<size_t>(node.start);
  }
  out.insert(out.end(), reversed.rbegin(), reversed.rend());
}

void T5Tokenizer::Impl::tokenize_segment(std::string_view text, std::vector<int64_t>& out) const {
  const std::string normalized = charsmap.normalize(text);
  // WhitespaceSplit: words between whitespace characters.
  std::string word;
  const auto flush = [&] {
    if (word.empty()) return;
    // Metaspace: "▁" before the word, then a split before every "▁" it holds.
    if (word.compare(0, kSpaceMark.size(), kSpaceMark) != 0) word.insert(0, kSpaceMark);
    size_t begin = 0;
    while (begin < word.size()) {
      size_t next = word.find(kSpaceMark, begin + kSpaceMark.size());
      if (next == std::string::npos) next = word.size();
      unigram(std::string_view(word).substr(begin, next - begin), out);
      begin = next;
    }
    word.clear();
  };
  for (size_t i = 0; i < normalized.size();) {
    char32_t c;
    const size_t length = unicode::decode_utf8_at(normalized, i, c);
    if (unicode::is_white_space(c))
      flush();
    else
      word.append(normalized, i, length);
    i += length;
  }
  flush();
}

std::vector<int64_t> T5Tokenizer::encode(std::string_view text) const {
  const std::string valid = unicode::sanitize_utf8(text);
  std::vector<int64_t> ids;
  for (const auto& piece : impl_->special.split(valid)) {
    if (piece.id >= 0)
      ids.push_back(piece.id);
    else
      impl_->tokenize_segment(piece.text, ids);
  }
  ids.push_back(eos_id);
  return ids;
}

std::vector<int64_t> T5Tokenizer::operator()(std::string_view text, int64_t max_length) const {
  if (max_length < 1)
    throw Error("T5Tokenizer: max_length " + std::to_string(max_length) + " leaves no room for the end token");
  return tokenizers::truncate_and_pad(encode(text), max_length, /*trailing=*/1, pad_id);
}

at::Tensor T5Tokenizer::encode_batch(const std::vector<std::string>& texts, int64_t max_length) const {
  return tokenizers::encode_rows(texts, max_length, [&](std::string_view text) { return (*this)(text, max_length); });
}

int64_t T5Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->ids.find(std::string(token));
  return it == impl_->ids.end() ? -1 : it->second;
}

int64_t T5Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->scores.size()); }

}  // namespace diffuse

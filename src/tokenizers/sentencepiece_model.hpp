#pragma once
// A SentencePiece model file (spiece.model, a serialized ModelProto), read directly from its
// protobuf encoding: the pieces with their scores and types, the unknown piece's id, and the
// normalizer's precompiled character map.
//
// Why not libsentencepiece: Debian's libsentencepiece.so.0 carries its own copy of protobuf-lite
// with exported symbols, which take the place of libprotobuf.so.32's inside libtorch's
// dependencies and crash every program at start-up once both are loaded. Reading the file is
// small, and transformers does not run SentencePiece either (its tokenizers backend rebuilds the
// model from these same fields).

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse::tokenizers {

struct SentencePieceModel {
  enum class PieceType : int { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };
  enum class ModelType : int { Unigram = 1, Bpe = 2, Word = 3, Char = 4 };

  struct Piece {
    std::string text;
    float score = 0;
    PieceType type = PieceType::Normal;
  };
  std::vector<Piece> pieces;
  ModelType model_type = ModelType::Unigram;  // TrainerSpec.model_type
  int64_t unk_id = 0;                         // TrainerSpec.unk_id
  bool byte_fallback = false;                 // TrainerSpec.byte_fallback
  std::string precompiled_charsmap;           // NormalizerSpec.precompiled_charsmap

  // Errors name the file: missing, unreadable, or not a ModelProto.
  static SentencePieceModel load(const std::filesystem::path& file);
  // `source` names the data in error messages.
  static SentencePieceModel parse(std::string_view serialized, const std::string& source);
  // The protobuf encoding of the fields above (what parse reads back), for writing spiece.model files.
  std::string serialize() const;
};

}  // namespace diffuse::tokenizers

#include "tokenizers/sentencepiece_model.hpp"

#include <cstring>
#include <fstream>
#include <sstream>

#include "diffuse/error.hpp"

namespace diffuse::tokenizers {

namespace {

// Just enough of the protobuf wire format to walk a message's fields.
class ProtoReader {
 public:
  ProtoReader(std::string_view data, const std::string& source) : data_(data), source_(source) {}
  bool done() const { return pos_ >= data_.size(); }

  // The next field's number and wire type.
  std::pair<uint64_t, uint32_t> tag() {
    const uint64_t value = varint();
    return {value >> 3, static_cast<uint32_t>(value & 7)};
  }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail();
      const auto byte = static_cast<unsigned char>(data_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    fail();
  }
  std::string_view bytes() {
    const uint64_t length = varint();
    if (length > data_.size() - pos_) fail();
    std::string_view out = data_.substr(pos_, length);
    pos_ += length;
    return out;
  }
  float fixed32_float() {
    if (4 > data_.size() - pos_) fail();
    uint32_t bits = 0;
    for (int k = 3; k >= 0; --k) bits = (bits << 8) | static_cast<unsigned char>(data_[pos_ + k]);
    pos_ += 4;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case 0: varint(); return;
      case 1: advance(8); return;
      case 2: bytes(); return;
      case 5: advance(4); return;
      default: fail();
    }
  }
  // Reads a field of the expected wire type, or fails.
  void expect(uint32_t wire_type, uint32_t expected) {
    if (wire_type != expected) fail();
  }

  [[noreturn]] void fail() const {
    throw Error(source_ + ": not a SentencePiece model (malformed ModelProto)");
  }

 private:
  void advance(size_t n) {
    if (n > data_.size() - pos_) fail();
    pos_ += n;
  }

  std::string_view data_;
  const std::string& source_;
  size_t pos_ = 0;
};

constexpr uint32_t kVarint = 0, kLengthDelimited = 2, kFixed32 = 5;

SentencePieceModel::Piece read_piece(std::string_view data, const std::string& source) {
  // SentencePiece: piece = 1, score = 2, type = 3.
  SentencePieceModel::Piece piece;
  ProtoReader in(data, source);
  while (!in.done()) {
    auto [field, wire] = in.tag();
    if (field == 1) {
      in.expect(wire, kLengthDelimited);
      piece.text = std::string(in.bytes());
    } else if (field == 2) {
      in.expect(wire, kFixed32);
      piece.score = in.fixed32_float();
    } else if (field == 3) {
      in.expect(wire, kVarint);
      const uint64_t type = in.varint();
      if (type < 1 || type > 6) in.fail();
      piece.type = static_cast<SentencePieceModel::PieceType>(type);
    } else {
      in.skip(wire);
    }
  }
  return piece;
}

}  // namespace

SentencePieceModel SentencePieceModel::parse(std::string_view serialized, const std::string& source) {
  SentencePieceModel model;
  ProtoReader in(serialized, source);
  while (!in.done()) {
    auto [field, wire] = in.tag();
    if (field == 1) {  // pieces
      in.expect(wire, kLengthDelimited);
      model.pieces.push_back(read_piece(in.bytes(), source));
    } else if (field == 2) {  // trainer_spec: model_type = 3, byte_fallback = 35, unk_id = 40
      in.expect(wire, kLengthDelimited);
      ProtoReader spec(in.bytes(), source);
      while (!spec.done()) {
        auto [spec_field, spec_wire] = spec.tag();
        if (spec_field == 3 || spec_field == 35 || spec_field == 40) {
          spec.expect(spec_wire, kVarint);
          const uint64_t value = spec.varint();
          if (spec_field == 3) model.model_type = static_cast<ModelType>(value);
          if (spec_field == 35) model.byte_fallback = value != 0;
          if (spec_field == 40) model.unk_id = static_cast<int32_t>(value);
        } else {
          spec.skip(spec_wire);
        }
      }
    } else if (field == 3) {  // normalizer_spec: precompiled_charsmap = 2
      in.expect(wire, kLengthDelimited);
      ProtoReader spec(in.bytes(), source);
      while (!spec.done()) {
        auto [spec_field, spec_wire] = spec.tag();
        if (spec_field == 2) {
          spec.expect(spec_wire, kLengthDelimited);
          model.precompiled_charsmap = std::string(spec.bytes());
        } else {
          spec.skip(spec_wire);
        }
      }
    } else {
      in.skip(wire);
    }
  }
  if (model.pieces.empty()) throw Error(source + ": not a SentencePiece model (no pieces)");
  if (model.unk_id < 0 || model.unk_id >= static_cast<int64_t>(model.pieces.size()))
    throw Error(source + ": unk_id " + std::to_string(model.unk_id) + " is not a piece of the model");
  return model;
}

namespace {

// The writing half of the wire format: varints, and length-delimited fields.
void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out += static_cast<char>((value & 0x7F) | 0x80);
    value >>= 7;
  }
  out += static_cast<char>(value);
}
void put_tag(std::string& out, uint64_t field, uint32_t wire_type) { put_varint(out, field << 3 | wire_type); }
void put_bytes(std::string& out, uint64_t field, std::string_view bytes) {
  put_tag(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

}  // namespace

std::string SentencePieceModel::serialize() const {
  std::string out;
  for (const Piece& piece : pieces) {
    std::string message;
    put_bytes(message, 1, piece.text);
    put_tag(message, 2, kFixed32);
    uint32_t score_bits = 0;
    std::memcpy(&score_bits, &piece.score, 4);
    for (int i = 0; i < 4; ++i) message += static_cast<char>((score_bits >> (8 * i)) & 0xFF);
    put_tag(message, 3, kVarint);
    put_varint(message, static_cast<uint64_t>(piece.type));
    put_bytes(out, 1, message);
  }
  std::string trainer;
  put_tag(trainer, 3, kVarint);
  put_varint(trainer, static_cast<uint64_t>(model_type));
  put_tag(trainer, 35, kVarint);
  put_varint(trainer, byte_fallback ? 1 : 0);
  put_tag(trainer, 40, kVarint);
  put_varint(trainer, static_cast<uint64_t>(unk_id));
  put_bytes(out, 2, trainer);
  std::string normalizer;
  if (!precompiled_charsmap.empty()) put_bytes(normalizer, 2, precompiled_charsmap);
  put_bytes(out, 3, normalizer);
  return out;
}

SentencePieceModel SentencePieceModel::load(const std::filesystem::path& file) {
  if (!std::filesystem::exists(file)) throw Error(file.string() + ": SentencePiece model not found");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open SentencePiece model");
  std::stringstream data;
  data << in.rdbuf();
  return parse(data.str(), file.string());
}

}  // namespace diffuse::tokenizers

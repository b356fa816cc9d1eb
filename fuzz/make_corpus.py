#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (fuzz/corpus/<target>/), the tokenizer folders that the
tokenizer targets also load (fuzz/data/), and the reproducers of the bugs found by reading the code
(fuzz/regressions/<target>/; the fuzzers' own finds are copied there as they are). Standard library
only; run it again after changing it, and commit what it writes. Every file is small and made here:
nothing is copied from a real model.

Inputs with several files are the files joined by PART_SEPARATOR (fuzz/fuzz_support.hpp splits them).
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
PART_SEPARATOR = b"\n--8<--\n"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)


def parts(*items):
    return PART_SEPARATOR.join(i.encode("utf-8") if isinstance(i, str) else i for i in items)


def js(value, indent=2):
    return json.dumps(value, indent=indent, ensure_ascii=False) + "\n"


# ---- safetensors --------------------------------------------------------------------------------

ELEMENT_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def safetensors(tensors, metadata=None, align=True):
    """tensors: [(name, dtype, shape)], data filled with a byte pattern. Returns the file's bytes."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = ELEMENT_SIZE[dtype]
        for d in shape:
            n *= d
        if dtype == "BOOL":
            payload = bytes((i % 2) for i in range(n))
        else:
            payload = bytes((7 * i + len(name)) % 251 for i in range(n))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    if align:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def raw_safetensors(header_text, data=b""):
    header_text = header_text.encode() if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(header_text)) + header_text + data


def safetensors_corpus(out):
    write(f"{out}/mixed_dtypes.safetensors", safetensors(
        [("linear.weight", "F32", [2, 3]), ("linear.bias", "F32", [2]), ("norm.weight", "BF16", [4]),
         ("embed.weight", "F16", [3, 2]), ("position_ids", "I64", [1, 4]), ("mask", "BOOL", [5]),
         ("scalar", "F64", [])], metadata={"format": "pt"}))
    write(f"{out}/odd_dtypes.safetensors", safetensors(
        [("f8_e4m3", "F8_E4M3", [4]), ("f8_e5m2", "F8_E5M2", [2, 2]), ("u16", "U16", [3]),
         ("u32", "U32", [2]), ("u64", "U64", [1]), ("i8", "I8", [5]), ("i16", "I16", [2]),
         ("i32", "I32", [2, 1]), ("u8", "U8", [3])]))
    write(f"{out}/empty_tensors.safetensors", safetensors(
        [("empty", "F32", [0]), ("empty_2d", "BF16", [3, 0]), ("after", "I32", [1])]))
    write(f"{out}/metadata_only.safetensors", safetensors([], metadata={"format": "pt", "note": "no tensors"}))
    write(f"{out}/no_tensors.safetensors", raw_safetensors("{}"))
    write(f"{out}/unaligned.safetensors", safetensors(
        [("a", "U8", [3]), ("b", "F32", [1]), ("c", "F16", [1, 1, 1])], align=False))
    # Near misses: each fails one check of the header.
    write(f"{out}/bad_overlap.safetensors", raw_safetensors(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)))
    write(f"{out}/bad_size.safetensors", raw_safetensors(
        '{"a":{"dtype":"I64","shape":[2,2],"data_offsets":[0,16]}}', bytes(16)))
    write(f"{out}/bad_dtype.safetensors", raw_safetensors(
        '{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', bytes(8)))
    write(f"{out}/bad_metadata.safetensors", raw_safetensors('{"__metadata__":{"format":1}}'))
    write(f"{out}/truncated.safetensors", safetensors([("a", "F32", [4])])[:-5])
    write(f"{out}/header_past_end.safetensors", struct.pack("<Q", 64) + b'{"a":1}')
    write(f"{out}/not_json.safetensors", raw_safetensors("{\"a\": [1, 2,", b""))
    write(f"{out}/trailing_bytes.safetensors", safetensors([("a", "F32", [2])]) + bytes(8))
    write(f"{out}/gap.safetensors", raw_safetensors(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', bytes(12)))


# ---- sharded index --------------------------------------------------------------------------------

def checkpoint_corpus(out):
    shard_1 = safetensors([("blocks.0.weight", "F32", [2, 2]), ("blocks.0.bias", "F32", [2])],
                          metadata={"format": "pt"})
    shard_2 = safetensors([("blocks.1.weight", "BF16", [2, 2]), ("norm.weight", "F16", [3])],
                          metadata={"format": "pt"})
    weight_map = {"blocks.0.weight": "model-00001-of-00002.safetensors",
                  "blocks.0.bias": "model-00001-of-00002.safetensors",
                  "blocks.1.weight": "model-00002-of-00002.safetensors",
                  "norm.weight": "model-00002-of-00002.safetensors"}
    index = {"metadata": {"total_size": 38}, "weight_map": weight_map}
    write(f"{out}/two_shards", parts(js(index), shard_1, shard_2))
    write(f"{out}/one_shard", parts(
        js({"metadata": {"total_size": 16}, "weight_map": {"w": "model-00001-of-00002.safetensors"}}),
        safetensors([("w", "F32", [4])])))
    # Near misses: a tensor the shard lacks, a name outside the folder, a shard that is absent,
    # a tensor in both shards.
    write(f"{out}/missing_tensor", parts(
        js({"weight_map": dict(weight_map, extra="model-00002-of-00002.safetensors")}), shard_1, shard_2))
    write(f"{out}/outside_folder", parts(js({"weight_map": {"w": "../model-00001-of-00002.safetensors"}}),
                                         shard_1))
    write(f"{out}/absent_shard", parts(js({"weight_map": {"w": "model-00002-of-00002.safetensors"}}), shard_1))
    write(f"{out}/duplicate", parts(js({"weight_map": {"blocks.0.bias": "model-00001-of-00002.safetensors",
                                                       "x": "model-00002-of-00002.safetensors"}}),
                                    shard_1, shard_1))
    write(f"{out}/empty_map", parts(js({"weight_map": {}})))


# ---- configs ---------------------------------------------------------------------------------------

def configs_corpus(out):
    write(f"{out}/model_index.json", js({
        "_class_name": "FluxPipeline", "_diffusers_version": "0.32.0",
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    write(f"{out}/clip_text_config.json", js({
        "architectures": ["CLIPTextModel"], "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "quick_gelu",
        "hidden_size": 24, "intermediate_size": 40, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "model_type": "clip_text_model", "num_attention_heads": 3, "num_hidden_layers": 2, "pad_token_id": 1,
        "projection_dim": 24, "torch_dtype": "float32", "vocab_size": 1000}))
    write(f"{out}/t5_config.json", js({
        "architectures": ["T5EncoderModel"], "d_ff": 48, "d_kv": 6, "d_model": 24, "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": 2, "num_heads": 4,
        "num_layers": 2, "pad_token_id": 0, "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32, "vocab_size": 500}))
    write(f"{out}/t5_relu_config.json", js({"d_model": 16, "feed_forward_proj": "relu", "num_layers": 1}))
    write(f"{out}/transformer_config.json", js({
        "_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.32.0", "attention_head_dim": 8,
        "axes_dims_rope": [2, 2, 4], "guidance_embeds": False, "in_channels": 8, "joint_attention_dim": 16,
        "num_attention_heads": 2, "num_layers": 1, "num_single_layers": 2, "out_channels": None,
        "patch_size": 1, "pooled_projection_dim": 16}))
    write(f"{out}/vae_config.json", js({
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.32.0", "act_fn": "silu",
        "block_out_channels": [4, 8], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "force_upcast": True, "in_channels": 3, "latent_channels": 4, "latents_mean": None, "latents_std": None,
        "layers_per_block": 1, "mid_block_add_attention": True, "norm_num_groups": 2, "out_channels": 3,
        "sample_size": 32, "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "use_post_quant_conv": False,
        "use_quant_conv": False}))
    write(f"{out}/scheduler_config.json", js({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.32.0",
        "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 4096,
        "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0, "shift_terminal": None,
        "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
        "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False}))
    write(f"{out}/nested.json", js({"text_config": {"hidden_size": 8, "vocab_size": 10},
                                    "list": [1, 2.5, "x", None, True, {"a": []}],
                                    "big": 18446744073709551615, "neg": -9223372036854775808,
                                    "float": 1e308, "unicode": "caf\u00e9 \u6771\u4eac"}, indent=None))
    write(f"{out}/wrong_types.json", js({"vocab_size": "12", "hidden_act": 3, "guidance_embeds": 1,
                                         "axes_dims_rope": [1.5], "block_out_channels": [],
                                         "time_shift_type": "cubic", "feed_forward_proj": "gated-"}, indent=None))


# ---- CLIP tokenizer ---------------------------------------------------------------------------------

def byte_level_alphabet():
    """GPT-2's byte -> printable character map, which CLIP's vocabulary is written in."""
    out, shifted = [], 0
    for b in range(256):
        printable = ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF
        out.append(chr(b) if printable else chr(256 + shifted))
        if not printable:
            shifted += 1
    return out


CLIP_WORDS = ["the", "a", "photo", "of", "cat", "dog", "red", "sky", "café", "at", "night", "'s", "!!", "12"]


def clip_tokenizer_files(alphabet_bytes=range(256), words=CLIP_WORDS, max_length=77):
    alphabet = byte_level_alphabet()
    vocab, merges = {}, []

    def add(token):
        if token not in vocab:
            vocab[token] = len(vocab)

    for b in alphabet_bytes:
        add(alphabet[b])
    for b in alphabet_bytes:
        add(alphabet[b] + "</w>")
    # Merges that build each word left to right, as a BPE trainer would have learned them.
    for word in words:
        symbols = [alphabet[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        for s in symbols:
            add(s)
        current = symbols[0]
        for s in symbols[1:]:
            merge = f"{current} {s}"
            if merge not in merges:
                merges.append(merge)
            current += s
            add(current)
    add("<|startoftext|>")
    add("<|endoftext|>")
    config = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "model_max_length": max_length,
              "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
              "unk_token": {"content": "<|endoftext|>", "special": True}}
    return (json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n",
            "#version: 0.2\n" + "\n".join(merges) + "\n", js(config))


TEXTS = [
    "a photo of a cat",
    "A Red DOG's night at the café!! 12",
    "<|startoftext|>the sky<|endoftext|> at night",
    "Cafe\u0301 na\u00efve r\u00e9sum\u00e9 \u2014 \u6771\u4eac \U0001F408 \u0130stanbul \u03a3\u039f\u03a6\u0399\u0391",
    "tabs\tand\nnew\r\nlines\u3000ideographic\u00a0nbsp  double  spaces",
    "it's they're we've I'm you'll he'd 'x",
    "\u1100\u1161\u11a8 \uac00 e\u0301\u0323 \u0915\u094d\u0937 \ufb01 \uff21\uff42\uff11 \u2026 \u2122 \u2460",
]


def clip_corpus(out, data):
    vocab, merges, config = clip_tokenizer_files()
    for name, text in (("vocab.json", vocab), ("merges.txt", merges), ("tokenizer_config.json", config)):
        write(f"{data}/clip/{name}", text)
    write(f"{out}/full_alphabet", parts(vocab, merges, config, TEXTS[0], TEXTS[1]))
    # Small vocabularies: only the letters of a few words, so most bytes are unknown.
    letters = sorted(set(b for w in ["cat", "dog", "the"] for b in w.encode()))
    small = clip_tokenizer_files(letters, ["cat", "dog", "the"], max_length=8)
    for i, text in enumerate(TEXTS):
        write(f"{out}/small_{i}", parts(*small, text, TEXTS[(i + 1) % len(TEXTS)]))
    write(f"{out}/no_config", parts(small[0], small[1], "", "the cat"))
    write(f"{out}/extra_specials", parts(small[0], small[1], js({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "model_max_length": 1e30,
        "additional_special_tokens": ["the</w>", {"content": "cat</w>", "special": True}],
        "extra_special_tokens": {"dog_token": "dog</w>"}}), "the</w> cat</w> and the dog</w>"))
    write(f"{out}/bad_merge", parts(small[0], "#version: 0.2\nc a\nzz q\n", small[2], "cat"))
    write(f"{out}/invalid_utf8_text", parts(*small, b"cat \xff\xfe dog \xe2\x82 \xc0\xaf \xed\xa0\x80"))


# ---- T5 tokenizer -----------------------------------------------------------------------------------

def varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_varint(number, value):
    return varint(number << 3 | 0) + varint(value)


def field_bytes(number, data):
    data = data.encode("utf-8") if isinstance(data, str) else data
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_float(number, value):
    return varint(number << 3 | 5) + struct.pack("<f", value)


def double_array_trie(rules):
    """A darts-clone double array over the UTF-8 keys of `rules` (key -> replacement), in the layout
    that SentencePiece's precompiled_charsmap holds: [u32 trie bytes][u32 units][NUL-terminated pool].
    A unit: label in bits 0-7, has_leaf in bit 8, offset to its children in bits 10-31 (node index
    XOR offset = base of the children); a leaf's value unit (bit 31 set) sits at base XOR 0."""
    pool, value_of = b"", {}
    for key, replacement in rules.items():
        value_of[key.encode()] = len(pool)
        pool += (replacement if isinstance(replacement, bytes) else replacement.encode()) + b"\0"
    trie = {}  # nested dicts of byte -> child; None key holds the value
    for key, value in value_of.items():
        node = trie
        for b in key:
            node = node.setdefault(b, {})
        node[None] = value
    units, used, bases = {0: 0}, {0}, set()

    def place(node):
        labels = sorted(k for k in node if k is not None)
        needed = labels + ([0] if None in node else [])
        base = 1
        while base in bases or any((base ^ label) in used for label in needed):
            base += 1
        bases.add(base)
        for label in needed:
            used.add(base ^ label)
        return base, labels

    queue = [(0, trie)]  # (unit index, node)
    while queue:
        index, node = queue.pop(0)
        base, labels = place(node)
        offset = index ^ base
        assert offset < (1 << 21)
        label = units[index] & 0xFF
        units[index] = label | ((1 << 8) if None in node else 0) | (offset << 10)
        if None in node:
            units[base] = (1 << 31) | node[None]
        for label in labels:
            units[base ^ label] = label
            queue.append((base ^ label, node[label]))
    size = max(units) + 1
    array = b"".join(struct.pack("<I", units.get(i, 0)) for i in range(size))
    return struct.pack("<I", len(array)) + array + pool


# NFKC-like rules of the kind T5's charsmap holds: full-width forms, ligatures, spaces, a composed
# cluster, a deletion; keys that share their first bytes.
CHARSMAP_RULES = {
    "\u3000": " ", "\u00a0": " ", "\uff21": "A", "\uff42": "b", "\uff11": "1", "\ufb01": "fi",
    "\u2026": "...", "\u2122": "TM", "\u2460": "1", "e\u0301": "\u00e9", "\u200b": "", "\u00bd": "1\u20442",
}

T5_WORDS = ["a", "the", "photo", "of", "cat", "dog", "red", "sky", "at", "night", "caf\u00e9", "hello", "world"]


def t5_tokenizer_files(words=T5_WORDS, charsmap=True, extra_ids=4, chars="abcdefghijklmnopqrstuvwxyz0123456789.,!'",
                       rules=CHARSMAP_RULES):
    pieces = [("<pad>", 0.0, 3), ("</s>", 0.0, 3), ("<unk>", 0.0, 2), ("\u2581", -3.0, 1)]
    score = -4.0
    for w in words:
        pieces.append(("\u2581" + w, score, 1))
        score -= 0.25
    pieces += [("ing", -6.0, 1), ("s", -6.5, 1), ("<user>", 0.0, 4), ("<unused>", 0.0, 5)]
    pieces += [(c, -10.0, 1) for c in chars]
    model = b""
    for text, piece_score, piece_type in pieces:
        model += field_bytes(1, field_bytes(1, text) + field_float(2, piece_score) + field_varint(3, piece_type))
    trainer = (field_bytes(1, "train.txt") + field_varint(3, 1) + field_varint(4, len(pieces)) +
               field_varint(35, 0) + field_varint(40, 2) + field_varint(41, 1) + field_varint(42, 2))
    model += field_bytes(2, trainer)
    normalizer = field_bytes(1, "nmt_nfkc")
    if charsmap:
        normalizer += field_bytes(2, double_array_trie(rules))
    normalizer += field_varint(3, 1) + field_varint(4, 1)
    model += field_bytes(3, normalizer)
    config = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": extra_ids,
              "additional_special_tokens": [f"<extra_id_{i}>" for i in range(extra_ids)],
              "model_max_length": 512, "tokenizer_class": "T5Tokenizer"}
    return model, js(config)


def t5_corpus(out, data):
    model, config = t5_tokenizer_files()
    write(f"{data}/t5/spiece.model", model)
    write(f"{data}/t5/tokenizer_config.json", config)
    for i, text in enumerate(TEXTS):
        write(f"{out}/charsmap_{i}", parts(model, config, text, TEXTS[(i + 1) % len(TEXTS)]))
    plain, plain_config = t5_tokenizer_files(["cat", "dog"], charsmap=False, extra_ids=2, chars="abc")
    write(f"{out}/plain", parts(plain, plain_config, "the cat <extra_id_1> dog</s>"))
    write(f"{out}/no_config", parts(plain, "", "a\u2581b c"))
    write(f"{out}/invalid_utf8_text", parts(plain, plain_config, b"cat \xff\xfe dog \xe2\x82 \xf4\x90\x80\x80"))
    write(f"{out}/bad_unk", parts(plain.replace(field_varint(40, 2), field_varint(40, 99)), plain_config, "cat"))


# ---- Qwen2 tokenizer --------------------------------------------------------------------------------

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_WORDS = ["the", " the", " a", " photo", " of", " cat", " dog", "'s", " caf\u00e9", "\n\n", "  ", "!!", " \u6771\u4eac"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"]


def qwen2_tokenizer_files(alphabet_bytes=range(256), words=QWEN2_WORDS, specials=QWEN2_SPECIALS, pair_merges=True):
    """A byte-level BPE in Qwen2's layout: (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json)."""
    alphabet = byte_level_alphabet()
    vocab, merges = {}, []

    def add(token):
        if token not in vocab:
            vocab[token] = len(vocab)

    for b in alphabet_bytes:
        add(alphabet[b])
    for word in words:
        symbols = ["".join(alphabet[b] for b in c.encode("utf-8")) for c in word]
        symbols = [s for s in symbols if all(ch in vocab for ch in s)]
        if not symbols:
            continue
        current = symbols[0]
        add(current)
        for symbol in symbols[1:]:
            add(symbol)
            merge = [current, symbol]
            if merge not in merges:
                merges.append(merge)
            current += symbol
            add(current)
    added = [{"id": len(vocab) + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(specials)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges if pair_merges else [" ".join(m) for m in merges]}}
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "bos_token": None,
              "model_max_length": 32768, "extra_special_tokens": specials[1:], "tokenizer_class": "Qwen2Tokenizer"}
    return (json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":")) + "\n",
            json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n",
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", js(config))


QWEN2_TEXTS = TEXTS + [
    "<|im_start|>system\nDescribe the image.<|im_end|>\n<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n",
    "  lots   of\twhite  space \r\n\n  x !?\n\ny I'M it'S we'LL \u017f'\u017f 2024 $3.14",
]


def qwen2_corpus(out, data):
    tokenizer, vocab, merges, config = qwen2_tokenizer_files()
    write(f"{data}/qwen2/tokenizer.json", tokenizer)
    write(f"{data}/qwen2/tokenizer_config.json", config)
    # Small vocabularies (the letters of a few words): most bytes are unknown and dropped.
    letters = sorted(set(b for w in ["the", " cat", " dog", "\n"] for b in w.encode()))
    small = qwen2_tokenizer_files(letters, ["the", " cat", " dog", "\n\n"], ["<|endoftext|>", "<|im_end|>"])
    for i, text in enumerate(QWEN2_TEXTS):
        write(f"{out}/small_{i}", parts(small[0], "", "", small[3], text, QWEN2_TEXTS[(i + 1) % len(QWEN2_TEXTS)]))
    write(f"{out}/full_alphabet", parts(tokenizer, "", "", config, QWEN2_TEXTS[-2], QWEN2_TEXTS[-1]))
    # The other layout: vocab.json + merges.txt, added tokens in added_tokens_decoder.
    legacy_config = json.loads(small[3])
    legacy_config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                             for t in json.loads(small[0])["added_tokens"]}
    legacy_config["padding_side"] = "left"
    legacy_config["truncation_side"] = "left"
    write(f"{out}/vocab_and_merges", parts("", small[1], small[2], js(legacy_config), QWEN2_TEXTS[-1], "the cat"))
    write(f"{out}/no_config", parts("", small[1], small[2], "", "the<|endoftext|> cat"))
    write(f"{out}/string_merges", parts(qwen2_tokenizer_files(letters, ["the", " cat"], [], pair_merges=False)[0],
                                        "", "", "", "the cat"))
    flags = json.loads(small[3])
    flags["add_prefix_space"] = True
    flags["pad_token"] = None
    flags["added_tokens_decoder"] = {
        "900": {"content": "<L>", "lstrip": True, "rstrip": False, "single_word": False, "normalized": False, "special": True},
        "901": {"content": "<R>", "lstrip": False, "rstrip": True, "single_word": False, "normalized": False, "special": True},
        "902": {"content": "cat", "lstrip": False, "rstrip": False, "single_word": True, "normalized": False, "special": False},
        "903": {"content": "caf\u00e9", "normalized": True, "special": False}}
    write(f"{out}/added_token_flags", parts("", small[1], small[2], js(flags), "a  <L>b<R>  cat concatenate cafe\u0301"))
    write(f"{out}/bad_merge", parts("", small[1], "#version: 0.2\nt h\nzz q\n", small[3], "the"))
    write(f"{out}/invalid_utf8_text", parts(*small, b"cat \xff\xfe dog \xe2\x82 \xc0\xaf \xed\xa0\x80"))
    marks = "a" + "".join("\u0301" if i % 2 == 0 else "\u0316" for i in range(2000))
    write(f"{out}/combining_marks", parts(*small, marks))


# ---- reproducers of bugs found by reading the code (fuzz/regressions/README.md says which) ---------

def regressions(out):
    # safetensors: a dimension over INT64_MAX (read back as negative), and an element count that
    # overflows int64 in TensorInfo::numel() although one dimension is 0.
    write(f"{out}/fuzz_safetensors/dimension_over_int64.safetensors", raw_safetensors(
        '{"a":{"dtype":"U8","shape":[9223372036854775809,0],"data_offsets":[0,0]}}'))
    write(f"{out}/fuzz_safetensors/numel_overflow.safetensors", raw_safetensors(
        '{"a":{"dtype":"U8","shape":[3,4611686018427387904,0],"data_offsets":[0,0]}}'))
    # An empty tensor written before a non-empty one that sorts before it by name: the overlap check
    # refuses the file (here: the writer's own file, written in reverse name order by the target).
    write(f"{out}/fuzz_safetensors/empty_tensor_order.safetensors", safetensors(
        [("a", "F32", [1]), ("b", "F32", [0])]))
    # configs: signed overflows in FluxTransformerConfig (axes sum, inner_dim) and a shift by 64 in
    # AutoencoderKLConfig::vae_scale_factor(); a nesting that nlohmann's recursive dump() cannot print.
    write(f"{out}/fuzz_configs/axes_dims_rope_sum_overflow.json",
          '{"axes_dims_rope":[9223372036854775807,1],"attention_head_dim":128}')
    write(f"{out}/fuzz_configs/inner_dim_overflow.json",
          '{"num_attention_heads":4611686018427387904,"attention_head_dim":4,"axes_dims_rope":[4]}')
    write(f"{out}/fuzz_configs/vae_65_levels.json", json.dumps(
        {"block_out_channels": [1] * 65, "down_block_types": ["D"] * 65, "up_block_types": ["U"] * 65}))
    write(f"{out}/fuzz_configs/nested_40000_deep.json", '{"vocab_size":' + "[" * 40000 + "]" * 40000 + "}")
    # tokenizer_config.json: a float out of int64's range; extra_ids that overflow or take minutes.
    small = clip_tokenizer_files(sorted(set(b"catdoghe")), ["cat", "dog", "the"], max_length=8)
    write(f"{out}/fuzz_clip_tokenizer/model_max_length_minus_1e30", parts(
        small[0], small[1], js({"model_max_length": -1e30}), "the cat"))
    model, _ = t5_tokenizer_files()
    write(f"{out}/fuzz_t5_tokenizer/extra_ids_int64_max", parts(model, js({"extra_ids": 9223372036854775807}), "a cat"))
    write(f"{out}/fuzz_t5_tokenizer/extra_ids_200_million", parts(model, js({"extra_ids": 200000000}), "a cat"))
    # spiece.model: a charsmap rule whose replacement is a lone UTF-8 lead byte.
    ill_formed, config = t5_tokenizer_files(rules={"q": b"\xe2"})
    write(f"{out}/fuzz_t5_tokenizer/charsmap_ill_formed_utf8", parts(ill_formed, config, "q"))
    # Slow inputs (hangs): one 6000-byte piece makes every place of a long word look up every prefix
    # up to 6000 bytes (cubic); 30000 alternating combining marks make CLIP's NFC ordering quadratic.
    long_piece, config = t5_tokenizer_files(words=T5_WORDS + ["b" * 6000])
    write(f"{out}/fuzz_t5_tokenizer/long_piece_long_word", parts(long_piece, config, "a" * 6000))
    marks = "a" + "".join("\u0301" if i % 2 == 0 else "\u0316" for i in range(30000))
    write(f"{out}/fuzz_clip_tokenizer/combining_marks_30000", parts(*small, marks))
    # Values nested 40000 deep where other dump() calls print them: ModelIndex's components, a
    # vocab.json id, tokenizer_config.json's integers and special tokens.
    deep = "[" * 40000 + "]" * 40000
    write(f"{out}/fuzz_configs/model_index_nested_40000_deep.json",
          '{"_class_name":"FluxPipeline","transformer":' + deep + "}")
    write(f"{out}/fuzz_clip_tokenizer/vocab_id_nested_40000_deep",
          parts(small[0].rstrip().rstrip("}") + ',"zz":' + deep + "}", small[1], small[2], "the cat"))
    write(f"{out}/fuzz_clip_tokenizer/model_max_length_nested_40000_deep",
          parts(small[0], small[1], '{"model_max_length":' + deep + "}", "the cat"))
    write(f"{out}/fuzz_t5_tokenizer/eos_token_nested_40000_deep", parts(model, '{"eos_token":' + deep + "}", "a cat"))


def main():
    corpus, data = os.path.join(HERE, "corpus"), os.path.join(HERE, "data")
    for folder in (corpus, data):
        shutil.rmtree(folder, ignore_errors=True)
    safetensors_corpus(f"{corpus}/fuzz_safetensors")
    checkpoint_corpus(f"{corpus}/fuzz_checkpoint")
    configs_corpus(f"{corpus}/fuzz_configs")
    clip_corpus(f"{corpus}/fuzz_clip_tokenizer", data)
    t5_corpus(f"{corpus}/fuzz_t5_tokenizer", data)
    qwen2_corpus(f"{corpus}/fuzz_qwen2_tokenizer", data)
    regressions(os.path.join(HERE, "regressions"))


if __name__ == "__main__":
    main()

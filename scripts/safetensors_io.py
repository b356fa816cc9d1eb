"""Reading and writing tensor files for the diffusers comparison scripts, with or without libraries.

compare_diffusers.py and compare_outputs.py exchange tensors with diffuse's programs (`generate
--latents FILE`, `generate --save-tensors FILE`), which read and write safetensors. The machines these
scripts run on may lack the `safetensors` package (and this one lacks torch and numpy), so every
function here has a pure-Python path:

  safetensors: 8 bytes (little-endian u64) header length N, N bytes of JSON
               {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
               then the raw little-endian tensor bytes; offsets count from the end of the header.
  .pt / .pth:  torch.save of a flat {name: tensor} dict (torch needed, of course).

What uses what:
  read_header, tensor_names, read_raw      pure Python, no third-party package.
  load_values                              shape + flat float values (numpy array if numpy imports, else
                                           array.array); no torch needed for safetensors.
  load_tensor, save_tensors                torch tensors; the `safetensors` package when it imports, else
                                           the pure-Python reader/writer here.
"""

from __future__ import annotations

import array
import json
import os
import struct
import sys

# safetensors dtype name -> (struct/array format character, bytes per element). BF16 has no format
# character: its values are the upper halves of float32s and are widened by hand.
_FORMATS = {
    "F64": ("d", 8),
    "F32": ("f", 4),
    "F16": ("e", 2),
    "BF16": (None, 2),
    "I64": ("q", 8),
    "I32": ("i", 4),
    "I16": ("h", 2),
    "I8": ("b", 1),
    "U8": ("B", 1),
    "BOOL": ("?", 1),
}

# The largest header we accept; real files have a few kB (safetensors itself caps it at 100 MB).
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def is_torch_file(path: str) -> bool:
    """Whether PATH is a torch.save file (by extension); everything else is treated as safetensors."""
    return os.path.splitext(path)[1].lower() in (".pt", ".pth", ".bin")


def read_header(path: str) -> tuple[dict, int]:
    """The parsed JSON header of a safetensors file and the byte offset where tensor data starts.

    Checks what a truncated or foreign file would get wrong (header length, data past the end of the
    file), so that a bad path fails here with its name rather than later with garbage values.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise ValueError(f"{path}: not a safetensors file (header length {header_len}, file size {size})")
        header = json.loads(f.read(header_len).decode("utf-8"))
    data_start = 8 + header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if data_start + end > size or begin > end:
            raise ValueError(f"{path}: tensor '{name}' lies past the end of the file")
    return header, data_start


def tensor_names(path: str) -> list[str]:
    """The tensor names in a safetensors or .pt file, for error messages that list what is there."""
    if is_torch_file(path):
        return sorted(_torch_load(path).keys())
    header, _ = read_header(path)
    return sorted(name for name in header if name != "__metadata__")


def read_raw(path: str, name: str) -> tuple[str, list[int], bytes]:
    """(dtype name, shape, raw little-endian bytes) of one tensor of a safetensors file."""
    header, data_start = read_header(path)
    if name not in header or name == "__metadata__":
        raise KeyError(f"{path}: no tensor named '{name}' (it has: {', '.join(tensor_names(path)) or 'none'})")
    info = header[name]
    dtype, shape = info["dtype"], list(info["shape"])
    begin, end = info["data_offsets"]
    count = 1
    for dim in shape:
        count *= dim
    if dtype in _FORMATS and count * _FORMATS[dtype][1] != end - begin:
        raise ValueError(f"{path}: tensor '{name}' has {end - begin} bytes, but {dtype} {shape} needs "
                         f"{count * _FORMATS[dtype][1]}")
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        raw = f.read(end - begin)
    return dtype, shape, raw


def _decode(dtype: str, raw: bytes):
    """Raw little-endian bytes -> a flat sequence of Python numbers (array.array), without numpy.

    float16 goes through struct's 'e' format; bfloat16 is widened to float32 by shifting each 16-bit
    pattern into the upper half of a 32-bit one, which is exactly what bfloat16 is.
    """
    if dtype not in _FORMATS:
        raise ValueError(f"tensor dtype {dtype} is not supported")
    code, width = _FORMATS[dtype]
    count = len(raw) // width
    if dtype == "BF16":
        halves = array.array("H", raw)
        if sys.byteorder == "big":
            halves.byteswap()
        widened = array.array("I", (h << 16 for h in halves))
        return array.array("f", widened.tobytes())
    if dtype == "F16":
        return array.array("f", struct.unpack(f"<{count}e", raw))
    values = array.array(code, raw)
    if sys.byteorder == "big" and width > 1:
        values.byteswap()
    return values


def load_values(path: str, name: str):
    """(shape, flat values) of one tensor, as float64 numpy array when numpy imports, else array.array.

    Needs no torch for safetensors files, so compare_outputs.py can run on a machine without it.
    """
    if is_torch_file(path):
        tensors = _torch_load(path)
        if name not in tensors:
            raise KeyError(f"{path}: no tensor named '{name}' (it has: {', '.join(sorted(tensors)) or 'none'})")
        tensor = tensors[name].detach().to("cpu").double().contiguous()
        shape = list(tensor.shape)
        try:
            return shape, tensor.reshape(-1).numpy()
        except (RuntimeError, ImportError):  # torch without numpy
            return shape, array.array("d", tensor.reshape(-1).tolist())
    dtype, shape, raw = read_raw(path, name)
    try:
        import numpy as np
    except ImportError:
        return shape, _decode(dtype, raw)
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return shape, bits.view(np.float32).astype(np.float64)
    numpy_types = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                   "I8": "i1", "U8": "u1", "BOOL": "?"}
    return shape, np.frombuffer(raw, dtype=numpy_types[dtype]).astype(np.float64)


def _torch_load(path: str) -> dict:
    """A flat {name: tensor} dict from a torch.save file, on the CPU, without running pickled code."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch too old for weights_only
        data = torch.load(path, map_location="cpu")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def load_tensor(path: str, name: str):
    """One tensor as a CPU torch tensor, in the dtype the file stores.

    Uses the `safetensors` package when it imports; otherwise decodes the file here (torch.frombuffer
    on the raw bytes, which are little-endian, as on every machine this runs on).
    """
    import torch

    if is_torch_file(path):
        tensors = _torch_load(path)
        if name not in tensors:
            raise KeyError(f"{path}: no tensor named '{name}' (it has: {', '.join(sorted(tensors)) or 'none'})")
        return tensors[name]
    try:
        from safetensors import safe_open
    except ImportError:
        safe_open = None
    if safe_open is not None:
        with safe_open(path, framework="pt") as f:
            if name not in f.keys():
                raise KeyError(f"{path}: no tensor named '{name}' (it has: {', '.join(sorted(f.keys())) or 'none'})")
            return f.get_tensor(name)
    dtype, shape, raw = read_raw(path, name)
    torch_types = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                   "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                   "U8": torch.uint8, "BOOL": torch.bool}
    if dtype not in torch_types:
        raise ValueError(f"{path}: tensor '{name}' has dtype {dtype}, which this reader does not support")
    if sys.byteorder != "little":
        raise RuntimeError("the pure-Python safetensors reader assumes a little-endian machine")
    if not raw:
        return torch.empty(shape, dtype=torch_types[dtype])
    # bytearray: torch.frombuffer wants a writable buffer; clone() detaches from it.
    return torch.frombuffer(bytearray(raw), dtype=torch_types[dtype]).reshape(shape).clone()


def _safetensors_dtype(tensor) -> str:
    """The safetensors dtype name of a torch tensor's dtype."""
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}
    if tensor.dtype not in names:
        raise ValueError(f"cannot write a {tensor.dtype} tensor to safetensors here")
    return names[tensor.dtype]


def _tensor_bytes(tensor) -> bytes:
    """The raw little-endian bytes of a CPU tensor, with numpy if torch has it, else through a uint8 view."""
    import torch

    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.numel() == 0:
        return b""
    # A uint8 view of the same storage works for every dtype, bfloat16 included, and needs no numpy.
    flat = tensor.reshape(-1).view(torch.uint8)
    try:
        return flat.numpy().tobytes()
    except (RuntimeError, ImportError):
        return bytes(flat.tolist())


def save_tensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Writes {name: tensor} to PATH: torch.save for .pt/.pth, else safetensors.

    For safetensors, the `safetensors` package when it imports, else the writer here, which lays out
    the same format (header padded with spaces to 8 bytes, tensors back to back in the order given),
    so diffuse's SafetensorsFile reads either. metadata: string values only, as the format requires.
    """
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    if is_torch_file(path):
        import torch

        torch.save(tensors, path)
        return
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        save_file = None
    if save_file is not None:
        save_file(tensors, path, metadata=metadata or None)
        return
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs = []
    offset = 0
    for name, tensor in tensors.items():
        blob = _tensor_bytes(tensor)
        header[name] = {"dtype": _safetensors_dtype(tensor), "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)

"""Prepacked weights in files, so that the server processes of one host hold one copy of each.

A packed weight (compile/packing.py: a bf16 linear weight reordered into oneDNN's blocked layout) is an
opaque tensor in the heap of the process that made it. Servers on one host that trace the same hot models
(a local fleet keeps `fleet.copies` of each model, 2 by default, on different server processes) would
each hold a private copy of the same bytes, so the memory for weights would grow with the processes,
although the plain weights they were packed from are shared through the page cache (mapped safetensors).

Here the first process to pack a weight writes the packed bytes, with oneDNN's description of their layout,
to a file named after the plain weight's content, and every process, the first one included, maps that file
copy-on-write and wraps the mapped bytes as its packed tensor. It does this through torch's AOTInductor C
shim (`aoti_torch_create_tensor_from_blob_v2`, the call AOTInductor-compiled code makes to build its own
prepacked constants). The pages are then the page cache's: one copy however many processes map them, and
clean file pages, which the kernel can drop under memory pressure and read back later instead of swapping
them. The outputs are bit-identical (the same bytes in the same layout; tested), and every graph over them is
still checked against the eager module before it serves (compile/tracing.py).

Layout on disk: `<directory>/<tag>/<key>.packed`.
- `tag`: the torch version and the CPU's model and bf16/AMX flags, because the blocked layout depends on
  both;
- `key`: a hash of the weight's bytes, shape and dtype;
- the file: the packed bytes, then the layout description, its length (4 bytes, little-endian) and a
  magic.

A file that does not read back (truncated, or written by another build) is replaced. A directory that
cannot be written, or a torch without the shim, leaves packing in the process's own memory, as before; the
log says so once. The directory is kept under `max_bytes`: after a write, the least recently mapped files
go first. A process that still maps a deleted file keeps its pages.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inferpack.runtime.hardware import cpu_flags, cpu_model

log = logging.getLogger("inferpack.packing")

MAGIC = b"IPPACK01"
_TRAILER = struct.Struct("<I8s")  # the layout description's length, the magic
_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def default_directory() -> Path:
    """Where packed weights are shared by default: the user's cache directory ($XDG_CACHE_HOME, else
    ~/.cache), under inferpack/packed-weights."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "inferpack" / "packed-weights"


@functools.cache
def machine_tag() -> str:
    """The part of a packed file's path that says which builds and CPUs its layout is for."""
    flags = ",".join(f for f in _FLAGS if f in cpu_flags())
    digest = hashlib.blake2b(f"{cpu_model()}|{flags}".encode(), digest_size=6).hexdigest()
    return f"torch-{torch.__version__.replace('+', '-')}-{digest}"


def weight_key(weight: torch.Tensor) -> str:
    """A name for a plain weight's packed file: its bytes, shape and dtype."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{weight.dtype}|{tuple(weight.shape)}|".encode())
    digest.update(weight.detach().contiguous().view(torch.uint8).reshape(-1).numpy().data)
    return digest.hexdigest()


@dataclass
class PackedFiles:
    """The packed weights of this host's server processes, in `directory` (at most `max_bytes`)."""

    directory: Path
    max_bytes: int = 4 * 2**30
    _broken: bool = field(default=False, repr=False)

    def packed(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`weight` packed, mapped from its file (written first when missing), and the mapped file's
        tensor, which must live as long as the packed one (it owns the mapping; the packed tensor does
        not). None where the files cannot be used: the caller packs in its own memory."""
        if self._broken:
            return None
        try:
            folder = self.directory / machine_tag()
            path = folder / f"{weight_key(weight)}.packed"
            mapped = _map(path, weight)
            if mapped is None:
                folder.mkdir(parents=True, exist_ok=True)
                _write(path, torch.ops.mkldnn._reorder_linear_weight(weight))
                self._trim(folder)
                mapped = _map(path, weight)
            if mapped is None:
                raise OSError(f"{path} does not read back after it was written")
        except (OSError, AttributeError, RuntimeError) as exc:
            self._broken = True
            log.warning(
                "packed weights are not shared between processes (each packs in its own memory): %s: %s; "
                "check that server.packed_weights_dir is writable, or set server.share_packed_weights = "
                "false",
                type(exc).__name__,
                exc,
            )
            return None
        return mapped

    def _trim(self, folder: Path) -> None:
        """Delete the least recently mapped files until the directory's files are within `max_bytes`."""
        files = []
        for path in folder.glob("*.packed"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another process trimmed it
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def _write(path: Path, packed: torch.Tensor) -> None:
    """Write a packed tensor's bytes and layout description to `path` (atomically: a whole file or none)."""
    size = torch.ops.mkldnn._nbytes(packed)
    layout = torch.ops.mkldnn._get_mkldnn_serialized_md(packed).numpy().tobytes()
    data = ctypes.string_at(torch.ops.mkldnn.data_ptr(packed), size)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.write(layout)
            out.write(_TRAILER.pack(len(layout), MAGIC))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _map(path: Path, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The packed tensor over `path`'s bytes (mapped copy-on-write) and the mapping's tensor; None when the
    file is missing or does not describe a packed `weight`."""
    try:
        total = path.stat().st_size
    except FileNotFoundError:
        return None
    if total < _TRAILER.size:
        return None
    mapping = torch.from_file(str(path), shared=False, size=total, dtype=torch.uint8)
    layout_size, magic = _TRAILER.unpack(mapping[total - _TRAILER.size :].numpy().tobytes())
    data_size = total - _TRAILER.size - layout_size
    if magic != MAGIC or data_size <= 0:
        return None
    layout = mapping[data_size : data_size + layout_size].numpy().tobytes()
    packed = _from_blob(mapping.data_ptr(), weight, layout)
    if torch.ops.mkldnn._nbytes(packed) != data_size:
        return None
    os.utime(path)  # recently mapped: trimmed last
    return packed, mapping


@functools.cache
def _shim() -> ctypes.CDLL:
    """torch's AOTInductor C shim (exported by libtorch_cpu), with the signatures used here."""
    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    create = lib.aoti_torch_create_tensor_from_blob_v2
    create.restype = ctypes.c_int32
    create.argtypes = [
        ctypes.c_void_p,  # data
        ctypes.c_int64,  # ndim
        ctypes.POINTER(ctypes.c_int64),  # sizes
        ctypes.POINTER(ctypes.c_int64),  # strides
        ctypes.c_int64,  # storage offset
        ctypes.c_int32,  # dtype
        ctypes.c_int32,  # device type
        ctypes.c_int32,  # device index
        ctypes.POINTER(ctypes.c_void_p),  # the new tensor's handle
        ctypes.c_int32,  # layout
        ctypes.c_char_p,  # opaque metadata: oneDNN's layout description
        ctypes.c_int64,  # its length
    ]
    for name in ("aoti_torch_layout__mkldnn", "aoti_torch_device_type_cpu", "aoti_torch_dtype_bfloat16"):
        getattr(lib, name).restype = ctypes.c_int32
    return lib


def _from_blob(address: int, weight: torch.Tensor, layout: bytes) -> torch.Tensor:
    """An opaque oneDNN tensor of `weight`'s shape over the packed bytes at `address` (not owned)."""
    if weight.dtype != torch.bfloat16:
        raise RuntimeError(f"packed weights are shared for bf16 only, not {weight.dtype}")
    lib = _shim()
    ndim = weight.dim()
    sizes = (ctypes.c_int64 * ndim)(*weight.shape)
    strides = (ctypes.c_int64 * ndim)(*weight.stride())
    handle = ctypes.c_void_p()
    status = lib.aoti_torch_create_tensor_from_blob_v2(
        address,
        ndim,
        sizes,
        strides,
        0,
        lib.aoti_torch_dtype_bfloat16(),
        lib.aoti_torch_device_type_cpu(),
        0,
        ctypes.byref(handle),
        lib.aoti_torch_layout__mkldnn(),
        layout,
        len(layout),
    )
    if status != 0 or not handle.value:
        raise RuntimeError(f"torch could not wrap a packed weight (AOTI shim status {status})")
    # the list form takes the handle over (moves the tensor out and frees the handle); the single form
    # copies it and leaves the handle holding a reference, so the tensor would never be freed
    (tensor,) = torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_capsule(handle.value)])
    return tensor


def _capsule(pointer: int) -> Any:
    """A PyCapsule around a tensor handle (what torch._C._aoti takes ownership from; its stubs say
    c_void_p, but the binding accepts a capsule only)."""
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    capsule: Any = new(pointer, None, None)
    return capsule

"""`inferpack compile --format safetensors`: the weights stored in the serving dtype, as a new version.

A bf16 server given an fp32 safetensors version converts every tensor when it loads it: a private copy
in each server process, which the kernel cannot share between processes or drop under memory pressure.
Weights already stored in bf16 load without a copy: the tensors are views of the memory-mapped file,
whose pages the page cache shares between every process that maps it. Shared weight files (a tenants'
common base) are cast once and stored by content (`repository.dedup.store_shared_tensors`), so the bf16
tenants of one base share one bf16 base file, as the fp32 ones share the fp32 file.

The new version is checked against eager fp32 like a traced one (the same tolerances, the same refusal
and `--force`), and the version policy (`runtime.versions.choose_version`) serves it only to servers
computing in its dtype.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from inferpack.compile.checks import CompileResult, check, compile_result, enforce, source_version
from inferpack.compile.convert import choose_variant
from inferpack.compile.examples import build_examples
from inferpack.compile.options import CompileOptions
from inferpack.compile.store import carry_file, new_version, repoint
from inferpack.compile.trace import device_for
from inferpack.errors import CompileError
from inferpack.repository.dedup import store_shared_tensors
from inferpack.repository.files import save_tensors
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import MANIFEST_FILE, write_manifest
from inferpack.runtime.modeling import TOKENIZERS
from inferpack.runtime.shared import cast_floating
from inferpack.runtime.skeletons import build_eager
from inferpack.runtime.tasks import handler_for
from inferpack.runtime.versions import TORCH_DTYPES

WEIGHTS_FILE = "model.safetensors"


def cast_model(
    repo: LocalRepository,
    model_id: str,
    options: CompileOptions,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> CompileResult:
    """Store a model's weights cast to `options.dtype` as a new safetensors version, checked against
    eager fp32; CompileError (nothing stored) when the check fails and `force` is off."""
    started = clock()
    variant = choose_variant(options.dtype, options.quantize, options.target)
    if variant.quantization != "none" or variant.dtype == "fp32":
        raise CompileError(
            f"--format safetensors stores the weights in another dtype; {variant.label} is not one",
            hint="pass --dtype bf16 (fp16 with --target cuda); fp32 weights are the source version itself",
        )
    if options.target == "neuron":
        raise CompileError(
            "a Neuron server serves compiled graphs only, not safetensors weights",
            hint=f"run `inferpack compile {model_id} --target neuron` (format torchscript)",
        )
    device = device_for(options.target)  # the check runs there: fails first when it is not available
    src = source_version(repo, model_id, options.source_version)
    manifest = repo.manifest(model_id, src)
    if manifest.config is None:
        raise CompileError(f"model {model_id!r} v{src} names no architecture config")
    dtype = TORCH_DTYPES[variant.dtype]
    version, new_dir = new_version(repo, model_id)
    try:
        shared = [
            repoint(
                store_shared_tensors(repo, _cast_file(repo.resolve_file(model_id, src, rel), dtype)), new_dir
            )
            for rel in manifest.shared_weights
        ]
        save_tensors(
            _cast_file(repo.resolve_file(model_id, src, manifest.weights), dtype), new_dir / WEIGHTS_FILE
        )
        cast = manifest.model_copy(
            update={
                "weights": WEIGHTS_FILE,
                "shared_weights": shared,
                "dtype": variant.dtype,
                "tokenizer": carry_file(repo, model_id, src, manifest.tokenizer, new_dir),
                "config": carry_file(repo, model_id, src, manifest.config, new_dir),
                "compiled_from": src,
                "agreement": None,
                "footprint": None,
                "description": f"safetensors ({variant.label}) cast by inferpack from v{src}"
                + (f"; {manifest.description}" if manifest.description else ""),
            }
        )
        tokenizer = TOKENIZERS.get(
            repo.resolve_file(model_id, src, manifest.tokenizer), manifest.max_sequence_length
        )
        handler = handler_for(manifest.task, manifest.labels, manifest.class_scores)
        # the check runs on exactly what a server will load: the new folder's files, in their dtype
        candidate = build_eager(new_dir, cast, dtype=dtype, device=device)
        eager = build_eager(repo.version_dir(model_id, src), manifest)
        checks = check(
            eager,
            candidate,
            candidate,
            build_examples(tokenizer, handler.pair_input),
            handler,
            device,
            variant,
        )
        enforce(model_id, variant, checks, options.force)
        write_manifest(new_dir / MANIFEST_FILE, cast.model_copy(update={"agreement": checks.agreement}))
    except BaseException:
        # a cast shared file stays: it is named by its content, and another version may already use it
        repo.remove_version(model_id, version)
        raise
    return compile_result(model_id, src, version, new_dir, variant, options.target, checks, clock() - started)


def _cast_file(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors with the floating-point ones in `dtype` (contiguous, ready to save)."""
    return {name: tensor.contiguous() for name, tensor in cast_floating(load_file(str(path)), dtype).items()}

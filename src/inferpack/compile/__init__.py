"""The compile step: trace a model to TorchScript for a target (cpu, cuda, neuron), optionally as bf16 or
int8, check it against eager fp32 and store it as a new version (see docs/compile.md).

Modules, one job each: `options` (what to compile), `examples` (trace and check inputs), `convert`
(bf16/int8 variants), `trace` (per-target tracing), `agreement` (comparison and tolerances), `store` (the
new version folder), `compiler` (the order of the steps), `cli` (the `inferpack compile` command).
"""

from __future__ import annotations

# No re-exports: importing the compiler pulls in torch and transformers, and `inferpack --help` imports this
# package. Use `from inferpack.compile.compiler import compile_model` and
# `from inferpack.compile.options import CompileOptions`.

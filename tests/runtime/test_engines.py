"""`server.engine` resolved by CPU kind (pure): both kinds of CPU this project's machines come in."""

from __future__ import annotations

import pytest

from inferpack.errors import ConfigError
from inferpack.runtime.engines import resolve_engine, with_engine
from inferpack.settings import ServerSettings


@pytest.mark.parametrize(
    ("native_bf16", "installed", "expected"),
    [
        (True, True, "eager"),  # AVX512-BF16: eager bf16 (batched, cross-tenant) is the best loop
        (False, True, "onnxruntime"),  # AVX2 only: ONNX Runtime fp32 beats eager fp32 at batch 1 and 8
        (False, False, "eager"),  # without onnxruntime installed auto never fails
    ],
)
def test_auto_picks_by_cpu_kind(native_bf16: bool, installed: bool, expected: str) -> None:
    assert resolve_engine("auto", "cpu", native_bf16=native_bf16, ort_installed=installed) == expected


def test_auto_is_eager_off_the_cpu_and_explicit_choices_stand() -> None:
    assert resolve_engine("auto", "cuda", native_bf16=False, ort_installed=True) == "eager"
    assert resolve_engine("eager", "cpu", native_bf16=False, ort_installed=True) == "eager"
    assert resolve_engine("onnxruntime", "cpu", native_bf16=True, ort_installed=True) == "onnxruntime"


def test_onnxruntime_refused_where_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="on the CPU; this server computes on cuda") as e:
        resolve_engine("onnxruntime", "cuda", native_bf16=False, ort_installed=True)
    assert "engine eager" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="onnxruntime, which is not installed") as e:
        resolve_engine("onnxruntime", "cpu", native_bf16=False, ort_installed=False)
    assert "inferpack[onnx]" in (e.value.hint or "")


def test_onnxruntime_computes_fp32_and_refuses_another_dtype() -> None:
    resolved = with_engine(ServerSettings(engine="auto"), "cpu", native_bf16=False, ort=True)
    assert (resolved.engine, resolved.dtype) == ("onnxruntime", "fp32")
    kept = with_engine(ServerSettings(engine="auto"), "cpu", native_bf16=True, ort=True)
    assert (kept.engine, kept.dtype) == ("eager", "auto")  # the server's own dtype rules apply
    with pytest.raises(ConfigError, match="computes fp32, and dtype is bf16"):
        with_engine(ServerSettings(engine="onnxruntime", dtype="bf16"), "cpu", native_bf16=True, ort=True)

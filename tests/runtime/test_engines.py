"""`server.engine` resolved against the processor (pure): the default must run on every machine."""

from __future__ import annotations

import pytest

from inferpack.errors import ConfigError
from inferpack.runtime.engines import resolve_engine, with_engine
from inferpack.settings import ServerSettings


def test_the_default_is_auto() -> None:
    assert ServerSettings().engine == "auto"


@pytest.mark.parametrize(
    ("device", "installed", "eager_fp32", "expected"),
    [
        ("cpu", True, True, "mixed"),  # eager fp32 plus sessions, per batch by measurement
        ("cpu", True, False, "eager"),  # eager bf16: never answer one request in two precisions
        ("cpu", False, True, "eager"),  # without onnxruntime installed auto never fails
        ("cuda", True, True, "eager"),  # ONNX graphs run on the CPU only
        ("neuron", True, True, "eager"),
    ],
)
def test_auto_is_mixed_where_onnxruntime_can_run_in_the_same_precision_else_eager(
    device: str, installed: bool, eager_fp32: bool, expected: str
) -> None:
    assert resolve_engine("auto", device, ort_installed=installed, eager_fp32=eager_fp32) == expected


@pytest.mark.parametrize(
    ("dtype", "native_bf16", "expected"),
    [("auto", False, "mixed"), ("fp32", True, "mixed"), ("auto", True, "eager"), ("bf16", False, "eager")],
)
def test_the_default_engine_follows_the_precision_eager_computes(
    dtype: str, native_bf16: bool, expected: str
) -> None:
    settings = ServerSettings(dtype=dtype)  # type: ignore[arg-type]
    assert with_engine(settings, "cpu", ort=True, native_bf16=native_bf16).engine == expected


def test_explicit_choices_stand() -> None:
    assert resolve_engine("eager", "cpu", ort_installed=True) == "eager"
    assert resolve_engine("eager", "cuda", ort_installed=False) == "eager"
    assert resolve_engine("onnxruntime", "cpu", ort_installed=True) == "onnxruntime"
    assert resolve_engine("mixed", "cpu", ort_installed=True) == "mixed"


@pytest.mark.parametrize("choice", ["onnxruntime", "mixed"])
def test_onnx_engines_refused_where_they_cannot_run(choice: str) -> None:
    with pytest.raises(ConfigError, match="on the CPU; this server computes on cuda") as e:
        resolve_engine(choice, "cuda", ort_installed=True)  # type: ignore[arg-type]
    assert "engine eager" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="onnxruntime, which is not installed") as e:
        resolve_engine(choice, "cpu", ort_installed=False)  # type: ignore[arg-type]
    assert "inferpack[onnx]" in (e.value.hint or "")


def test_onnxruntime_computes_fp32_and_refuses_another_dtype() -> None:
    resolved = with_engine(ServerSettings(engine="onnxruntime"), "cpu", ort=True)
    assert (resolved.engine, resolved.dtype) == ("onnxruntime", "fp32")
    with pytest.raises(ConfigError, match="computes fp32, and dtype is bf16"):
        with_engine(ServerSettings(engine="onnxruntime", dtype="bf16"), "cpu", ort=True)


def test_mixed_keeps_the_servers_dtype() -> None:
    # eager computes in the server's dtype (bf16 where native); the sessions beside it compute fp32
    resolved = with_engine(ServerSettings(engine="mixed"), "cpu", ort=True, native_bf16=True)
    assert (resolved.engine, resolved.dtype) == ("mixed", "auto")
    kept = with_engine(ServerSettings(engine="mixed", dtype="bf16"), "cpu", ort=True)
    assert (kept.engine, kept.dtype) == ("mixed", "bf16")
    assert with_engine(ServerSettings(), "cpu", ort=False).engine == "eager"

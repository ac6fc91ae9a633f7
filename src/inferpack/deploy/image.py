"""Container image builds: find a builder (docker, podman, buildah) and the command line for a variant."""

from __future__ import annotations

import shutil
from pathlib import Path

from inferpack.errors import ConfigError

BUILDERS = ("docker", "podman", "buildah")
VARIANTS = ("cpu", "cuda", "neuron")


def find_builder() -> str:
    """The first of docker, podman, buildah on PATH."""
    for tool in BUILDERS:
        if shutil.which(tool):
            return tool
    raise ConfigError("no container builder found", hint="install docker, podman or buildah")


def build_commands(
    tool: str,
    *,
    tag: str,
    variant: str,
    platform: str | None,
    base_image: str | None,
    context: Path,
) -> list[str]:
    """The build command line for `tool` (all three accept the same flags for what is used here)."""
    if variant not in VARIANTS:
        raise ConfigError(f"--variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if tool not in BUILDERS:
        raise ConfigError(f"--builder must be one of {', '.join(BUILDERS)}, not {tool!r}")
    verb = ["bud"] if tool == "buildah" else ["build"]
    cmd = [tool, *verb, "-f", str(context / "Containerfile"), "-t", tag, "--build-arg", f"VARIANT={variant}"]
    if platform:
        cmd += ["--platform", platform]
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    return [*cmd, str(context)]

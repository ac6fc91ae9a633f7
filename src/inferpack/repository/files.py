"""File modes: everything the repository writes gets the mode a plain `open()` would give it.

`tempfile.mkstemp` (atomic manifests, S3 downloads) and safetensors' `save_file` create files 0600
whatever the umask says, so a repository made by one user could not be read by a server running as
another (the container image's uid 10001): every file written here is set to 0666 minus the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode() -> int:
    """The mode a new regular file gets from `open()`: 0666 minus the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """`safetensors.torch.save_file`, then the umask's mode instead of its 0600."""
    save_file(tensors, str(path))
    os.chmod(path, umask_mode())

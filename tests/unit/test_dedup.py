from __future__ import annotations

from pathlib import Path

import numpy as np

from inferpack.repository import LocalRepository
from inferpack.repository.dedup import dedup_repository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput


def test_dedup_stores_shared_tensors_once_and_models_answer_the_same(tmp_path: Path) -> None:
    ids = make_demo_models(tmp_path, 3, task="feature-extraction", prefix="full", share_base=False)
    repo = LocalRepository(tmp_path)
    texts = [TextInput("the same sentence"), TextInput("another one")]
    before = {m: [r["embedding"] for r in load_model(repo, m, dtype="fp32").predict(texts)] for m in ids}
    sizes = {m: (tmp_path / m / "1" / "model.safetensors").stat().st_size for m in ids}

    assert dedup_repository(repo, dry_run=True).models_rewritten == 3
    assert repo.manifest(ids[0]).shared_weights == []  # a dry run changes nothing
    report = dedup_repository(repo)

    assert report.models_scanned == 3 and report.models_rewritten == 3 and len(report.shared_files) == 1
    assert report.bytes_after < report.bytes_before / 2
    for m in ids:
        assert (tmp_path / m / "1" / "model.safetensors").stat().st_size < sizes[m] / 8
        assert repo.manifest(m).shared_weights[0].startswith("../../_shared/weights/")
        after = [r["embedding"] for r in load_model(repo, m, dtype="fp32").predict(texts)]
        for x, y in zip(before[m], after, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6)
    assert dedup_repository(repo).models_scanned == 0  # idempotent: deduplicated models are skipped

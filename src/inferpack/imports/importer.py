"""One import: source -> staged version -> checked through the server's own loader against transformers ->
moved into the repository. A failure at any step leaves the repository as it was.

Steps:
1. Inspect the source (`folder.py`): task, labels, pooling, weights, tokenizer; refuse bad input early.
2. Build transformers' own model and fast tokenizer (`reference.py`); a slow tokenizer is converted here.
3. Stage a complete version in `<repo>/.import-<random>/` (hidden: never a model id): config.json, the
   weights as safetensors (from transformers' own state dict, so prefixes and renamed keys are already
   right), tokenizer.json, manifest.
4. Load the staged version with `load_model` (fp32) and compare its outputs with transformers' on a few
   inputs (`compile.agreement`, fp32 tolerance); the result goes into the manifest's `agreement`.
5. Move it in: the tokenizer into `_shared/tokenizers/` (by content hash), layer groups seen before into
   `_shared/weights/` (`repository.sharing`), then one rename makes the version appear.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from inferpack.compile.agreement import TOLERANCES, compare, output_rows
from inferpack.errors import ImportFailed, InferpackError, InvalidModelId
from inferpack.imports.folder import FolderModel, fingerprint, inspect_folder, source_files
from inferpack.imports.reference import (
    ReferenceOutput,
    check_items,
    load_reference,
    load_tokenizer,
    reference_outputs,
    tokenizer_json,
)
from inferpack.imports.source import Source, resolve_source
from inferpack.repository.files import save_tensors
from inferpack.repository.ids import validate_model_id
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import (
    MANIFEST_FILE,
    PER_TOKEN_TASKS,
    Agreement,
    Manifest,
    Task,
    write_manifest,
)
from inferpack.repository.sharing import GroupStore, store_shared_tokenizer
from inferpack.runtime.modeling import LoadedModel, load_model, recycle
from inferpack.runtime.tasks import TextInput

STAGING_PREFIX = ".import-"


@dataclass(frozen=True)
class ImportResult:
    """What one import did: the version it made (or found, when skipped) and its check."""

    model_id: str
    version: int
    task: Task
    source: str
    agreement: Agreement | None
    seconds: float
    skipped: bool = False
    shared_bytes: int = 0  # bytes of this version's tensors found in the shared store
    phases: dict[str, float] = field(default_factory=dict)  # seconds: transformers, check, store


class Importer:
    """Imports sources into one local repository; keeps the shared-group index across a bulk import."""

    def __init__(
        self,
        repo: LocalRepository,
        *,
        share: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.repo = repo
        self.share = share
        self.clock = clock
        self.groups = GroupStore(repo)
        self._phases: dict[str, float] = {}

    def import_source(
        self,
        source: str,
        *,
        model_id: str | None = None,
        task: Task | None = None,
        tokenizer: Path | None = None,
        new_version: bool = True,
        skip_if_imported: bool = False,
        base: Path | None = None,
    ) -> ImportResult:
        """Import SOURCE as a new version of `model_id` (default: the source's name).

        `skip_if_imported` (bulk resume): when the model's latest version came from the same source with
        the same fingerprint, nothing is done. `new_version=False` refuses an id that exists.
        """
        started = self.clock()
        resolved = resolve_source(source, base)
        chosen = validate_model_id(model_id) if model_id else _default_id(resolved.default_id)
        files = source_files(resolved.path) if resolved.kind == "folder" else [resolved.path]
        print_ = fingerprint(files, resolved.path if resolved.kind == "folder" else resolved.path.parent)
        if skip_if_imported and self._already_imported(chosen, resolved, print_):
            latest = self.repo.manifest(chosen)
            return ImportResult(
                chosen, self.repo.latest_version(chosen), latest.task, resolved.label, latest.agreement,
                self.clock() - started, skipped=True,
            )  # fmt: skip
        self._refuse_early(chosen, resolved, task, tokenizer, new_version)
        made_root = not self.repo.root.exists()
        staging = self._staging_root()
        try:
            self._phases = {}
            agreement: Agreement | None
            if resolved.kind == "folder":
                agreement = self._import_folder(resolved, chosen, task, staging, print_)
            else:
                assert tokenizer is not None and task is not None
                self._import_torchscript(resolved, chosen, task, tokenizer, staging, print_)
                agreement = None  # no reference to compare with: the output shapes are checked
            mark = self.clock()
            version, shared = self._move_in(chosen, staging / chosen / "1")
            self._phases["store"] = self._phases.get("store", 0.0) + self.clock() - mark
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if made_root and not any(self.repo.root.iterdir()):
                self.repo.root.rmdir()  # the repository did not exist before: leave none
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return ImportResult(
            chosen, version, self.repo.manifest(chosen, version).task, resolved.label, agreement,
            self.clock() - started, shared_bytes=shared, phases=dict(self._phases),
        )  # fmt: skip

    def _already_imported(self, model_id: str, source: Source, print_: str) -> bool:
        """True when the model's latest version came from this source, unchanged (bulk resume)."""
        if not self.repo.has_model(model_id):
            return False
        latest = self.repo.manifest(model_id)
        return latest.source == source.label and latest.source_fingerprint == print_

    def _refuse_early(
        self,
        model_id: str,
        source: Source,
        task: Task | None,
        tokenizer: Path | None,
        new_version: bool,
    ) -> None:
        """Refuse what needs no file read: an existing id with --no-new-version, misplaced options."""
        if not new_version and self.repo.has_model(model_id):
            raise ImportFailed(
                f"model {model_id!r} already exists in {self.repo.root} (versions "
                f"{self.repo.versions(model_id)}) and --no-new-version was given",
                hint="drop --no-new-version to add the next version, or pass another --id",
            )
        if source.kind == "torchscript" and (tokenizer is None or task is None):
            raise ImportFailed(
                f"{source.path} is a TorchScript file: it needs --tokenizer and --task",
                hint="--tokenizer names a tokenizer.json or a folder with the tokenizer's files",
            )
        if source.kind == "folder" and tokenizer is not None:
            raise ImportFailed(
                "--tokenizer is for TorchScript files; a model folder brings its own tokenizer"
            )

    # -- staging -----------------------------------------------------------------------------------

    def _staging_root(self) -> Path:
        self.repo.root.mkdir(parents=True, exist_ok=True)
        path = self.repo.root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        path.mkdir()
        return path

    def _import_folder(
        self, source: Source, model_id: str, task: Task | None, staging: Path, print_: str
    ) -> Agreement:
        mark = self.clock()
        model = inspect_folder(source.path, task)
        tokenizer = load_tokenizer(model)
        tok_text = tokenizer_json(model, tokenizer)
        reference = load_reference(model)
        self._phases["transformers"] = self.clock() - mark
        mark = self.clock()
        vdir = staging / model_id / "1"
        vdir.mkdir(parents=True)
        (vdir / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
        (vdir / "tokenizer.json").write_text(tok_text, encoding="utf-8")
        _check_tokenizer_file(vdir / "tokenizer.json", model)
        save_tensors(_plain_state(reference), vdir / "model.safetensors")
        hidden = int(getattr(getattr(reference, "config", None), "hidden_size", 0) or 0) or None
        manifest = Manifest(
            format="safetensors",
            task=model.task,
            weights="model.safetensors",
            config="config.json",
            tokenizer="tokenizer.json",
            max_sequence_length=model.max_sequence_length,
            labels=model.labels,
            class_scores=model.class_scores,
            hidden_size=hidden,
            parameters=sum(p.numel() for p in reference.parameters()),
            pooling=model.pooling,
            normalize=model.normalize,
            source=source.label,
            source_fingerprint=print_,
            description=f"imported from {source.label} ({_architecture(model)})",
        )
        write_manifest(vdir / MANIFEST_FILE, manifest)
        self._phases["store"] = self.clock() - mark
        mark = self.clock()
        items = check_items(model.task)
        expected = reference_outputs(reference, tokenizer, items, model.task, model.pooling, model.normalize)
        del reference
        agreement = self._check_staged(staging, model_id, items, expected)
        write_manifest(vdir / MANIFEST_FILE, manifest.model_copy(update={"agreement": agreement}))
        self._phases["check"] = self.clock() - mark
        return agreement

    def _check_staged(
        self, staging: Path, model_id: str, items: list[TextInput], expected: list[ReferenceOutput]
    ) -> Agreement:
        """Load the staged version through the server's loader and compare with transformers."""
        loaded = _load_staged(staging, model_id)
        try:
            batch = loaded.tokenizer.encode(items)
            for row, (item, ref) in enumerate(zip(items, expected, strict=True)):
                ids = [int(i) for i in batch.input_ids[row][: int(batch.attention_mask[row].sum())]]
                if ids != ref.ids:
                    raise ImportFailed(
                        f"the stored tokenizer.json splits {item.text!r} into other tokens than "
                        f"transformers' tokenizer ({len(ids)} vs {len(ref.ids)} tokens)",
                        hint="save a fast tokenizer (tokenizer.json) with the model and import again",
                    )
            rows = output_rows(loaded.forward(batch), batch, loaded.manifest.task)
        finally:
            recycle(loaded)
        comparison = compare([r.row for r in expected], rows)
        agreement = comparison.judge(TOLERANCES["fp32"])
        if not agreement.passed:
            shown = "NaN" if math.isnan(agreement.max_abs_diff) else f"{agreement.max_abs_diff:.3g}"
            raise ImportFailed(
                f"{model_id!r}: the server's model disagrees with transformers' own: max abs diff {shown} "
                f"(allowed {agreement.tolerance:.3g}), mean cosine {agreement.cosine:.6f} (required >= "
                f"{TOLERANCES['fp32'].min_cosine}); nothing imported",
                hint="this architecture is not served faithfully yet: please report it with the config.json",
            )
        return agreement

    def _import_torchscript(
        self, source: Source, model_id: str, task: Task, tokenizer: Path, staging: Path, print_: str
    ) -> None:
        vdir = staging / model_id / "1"
        vdir.mkdir(parents=True)
        shutil.copyfile(source.path, vdir / "model.pt")
        (vdir / "tokenizer.json").write_text(_tokenizer_text(tokenizer), encoding="utf-8")
        manifest = Manifest(
            format="torchscript",
            task=task,
            weights="model.pt",
            config=None,
            tokenizer="tokenizer.json",
            source=source.label,
            source_fingerprint=print_,
            description=f"TorchScript imported from {source.label}",
        )
        write_manifest(vdir / MANIFEST_FILE, manifest)
        loaded = _load_staged(staging, model_id)
        items = check_items(task)
        try:
            out = loaded.forward(loaded.tokenizer.encode(items))
        except Exception as exc:  # a module with another signature or input contract
            raise ImportFailed(
                f"{source.path} fails on a batch of {len(items)} texts: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
                hint="a TorchScript model takes (input_ids, attention_mask, token_type_ids) int64 tensors",
            ) from exc
        wanted = 3 if task in PER_TOKEN_TASKS else 2  # [batch, tokens, ...] or [batch, ...]
        if out.dim() != wanted or out.shape[0] != len(items) or not bool(torch.isfinite(out).all()):
            raise ImportFailed(
                f"{source.path} returns {tuple(out.shape)} for a batch of {len(items)}, not a {task} output",
                hint="a TorchScript model takes (input_ids, attention_mask, token_type_ids) and returns "
                "[batch, tokens, 2] QA logits, [batch, labels] class logits, [batch, tokens, labels] "
                "token tag logits or [batch, hidden] embeddings",
            )
        hidden = int(out.shape[1]) if task == "feature-extraction" else None
        write_manifest(vdir / MANIFEST_FILE, manifest.model_copy(update={"hidden_size": hidden}))

    # -- moving in ---------------------------------------------------------------------------------

    def _move_in(self, model_id: str, staged: Path) -> tuple[int, int]:
        """Share the tokenizer and known layer groups, then rename the staged version into place;
        returns the version and the bytes of its tensors found in the shared store."""
        manifest = Manifest.model_validate_json((staged / MANIFEST_FILE).read_text())
        created: list[Path] = []
        first_seen: list[str] = []
        shared_bytes = 0
        try:
            tokenizer = store_shared_tokenizer(self.repo, staged / manifest.tokenizer)
            (staged / manifest.tokenizer).unlink()
            update: dict[str, object] = {"tokenizer": _relative(tokenizer)}
            if manifest.format == "safetensors" and self.share:
                from safetensors.torch import load_file

                split = self.groups.split(load_file(str(staged / manifest.weights)))
                created, first_seen, shared_bytes = split.created, split.first_seen, split.shared_bytes
                if split.shared:
                    save_tensors(split.own, staged / manifest.weights)
                    update["shared_weights"] = [_relative(p) for p in split.shared]
            write_manifest(staged / MANIFEST_FILE, manifest.model_copy(update=update))
            version = self._rename(model_id, staged)
        except BaseException:
            for path in created:
                path.unlink(missing_ok=True)
            raise
        self.groups.note(first_seen)
        return version, shared_bytes

    def _rename(self, model_id: str, staged: Path) -> int:
        model_dir = self.repo.root / model_id
        made_dir = not model_dir.exists()
        model_dir.mkdir(exist_ok=True)
        for _ in range(10):  # another importer may take the same number: take the next one
            numbers = LocalRepository._version_numbers(model_dir)
            version = (numbers[-1] if numbers else 0) + 1
            try:
                staged.rename(model_dir / str(version))
                return version
            except OSError:
                continue
        if made_dir:
            shutil.rmtree(model_dir, ignore_errors=True)
        raise ImportFailed(f"could not add a version folder to {model_dir}")


def _load_staged(staging: Path, model_id: str) -> LoadedModel:
    try:
        return load_model(LocalRepository(staging), model_id, 1, dtype="fp32", warmup=False)
    except InferpackError as exc:
        raise ImportFailed(f"the server's loader cannot load the imported model: {exc.message}") from exc


def _check_tokenizer_file(path: Path, model: FolderModel) -> None:
    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:
        where = model.tokenizer_json or model.root
        raise ImportFailed(
            f"{where}: the tokenizer cannot be read as a fast tokenizer: {exc}",
            hint="the file is truncated or damaged: save the tokenizer again "
            "(tokenizer.save_pretrained(DIR))",
        ) from exc


def _tokenizer_text(path: Path) -> str:
    """A TorchScript model's tokenizer: a tokenizer.json file, or a folder with a tokenizer's files."""
    from inferpack.imports.folder import _tokenizer
    from inferpack.imports.reference import load_tokenizer as load

    if path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            Tokenizer.from_str(text)
        except Exception as exc:
            raise ImportFailed(f"{path} is not a readable tokenizer.json: {exc}") from exc
        return text
    if not path.is_dir():
        raise ImportFailed(f"--tokenizer {path} does not exist")
    found = _tokenizer(path, path)
    if found is not None:
        return found.read_text(encoding="utf-8")
    stub = FolderModel(path, {}, "feature-extraction", None, "softmax", "mean", True, [], None, 128)
    converted: str = load(stub).backend_tokenizer.to_str()
    return converted


def _plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors can store it: contiguous, no two names sharing memory."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.detach().clone().contiguous() if ptr in seen else tensor.detach().contiguous()
        seen.add(ptr)
    return out


def _relative(path: Path) -> str:
    """A `_shared/` file as the manifest names it, relative to a version folder."""
    return str(Path("..", "..", *path.parts[-3:]))


def _architecture(model: FolderModel) -> str:
    names = model.config.get("architectures") or [model.config.get("model_type", "?")]
    return str(names[0])


def _default_id(name: str) -> str:
    """The source's name as the model id, or an error that says the id came from the name (the user gave
    none, so "invalid model id 'My Model (v2)'" alone does not say what to change)."""
    try:
        return validate_model_id(name)
    except InvalidModelId as exc:
        raise InvalidModelId(
            f"the model id defaults to the source's name {name!r}, which is not a valid id",
            hint=f"name the model with --id; {exc.hint}",
        ) from exc

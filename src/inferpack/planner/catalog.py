"""The instance catalog: machine shapes and hourly prices the planner may buy.

The package ships `data/instances.json` (AWS on-demand prices for one stated region and date). Users
override or extend it with their own files (other regions, spot prices, savings plans):

- an entry whose `name` matches a shipped one replaces it entirely (all fields come from the new entry);
- an entry with a new `name` is added;
- `"remove": ["g5.48xlarge", ...]` at the top level of an override file drops shipped entries;
- `"replace": true` at the top level discards the shipped catalog and uses only that file.

Files are applied in the order given, so later files win. An entry the server cannot compute on (inf1's
first Inferentia, which needs the legacy torch-neuron SDK; an accelerator that does not match its target)
is refused, so no plan buys hardware its servers would leave idle.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from inferpack.errors import ConfigError
from inferpack.jsonfile import StrictModel, parse_json_model
from inferpack.plan import TargetName
from inferpack.runtime.targets import unservable_reason


class InstanceType(StrictModel):
    """One machine shape: CPU, memory, accelerators, and its price per hour."""

    name: str = Field(min_length=1, description="e.g. c6i.2xlarge, or 'local' for this host.")
    vcpus: int = Field(gt=0)
    memory_mb: int = Field(gt=0)
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    target: TargetName = "cpu"
    accelerator: str | None = Field(default=None, description="e.g. nvidia-t4, aws-inferentia2.")
    accelerator_count: int = Field(default=0, ge=0, description="GPUs or Inferentia chips.")
    accelerator_memory_mb: int = Field(default=0, ge=0, description="Memory per accelerator device.")
    price_per_hour: float = Field(ge=0)
    threads_per_core: int | None = Field(
        default=None,
        ge=1,
        description="vCPUs per physical core (EC2's DefaultThreadsPerCore). None: 2 on x86_64 (a vCPU is a "
        "hyperthread), 1 on arm64 (a Graviton vCPU is a core).",
    )
    max_pods: int | None = Field(
        default=None,
        ge=1,
        description="EKS max pods of this type (the EKS AMI's eni-max-pods.txt). Set: plans fit the EKS "
        "node's allocatable CPU and memory (planner/allocatable.py); unset: the whole machine.",
    )

    @property
    def physical_cores(self) -> int:
        """Physical cores: hyperthreads share a core's vector units, so GEMM throughput scales with these."""
        per_core = self.threads_per_core or (2 if self.architecture == "x86_64" else 1)
        return max(1, self.vcpus // per_core)

    @property
    def family(self) -> str:
        """The part before the dot (c6i for c6i.2xlarge)."""
        return self.name.split(".", 1)[0]


class CatalogFile(StrictModel):
    """The on-disk format of a catalog or an override file."""

    format_version: Literal[1] = 1
    region: str | None = None
    currency: str = "USD"
    price_kind: str | None = None
    as_of: str | None = None
    source: str | None = None
    notes: str | None = None
    max_pods_source: str | None = Field(default=None, description="Where the entries' max_pods come from.")
    replace: bool = Field(default=False, description="Discard the catalog so far and use only this file.")
    remove: list[str] = Field(default_factory=list, description="Names to drop from the catalog so far.")
    instances: list[InstanceType] = Field(default_factory=list)


class Catalog(StrictModel):
    """The effective catalog after overrides, with where its figures came from."""

    instances: list[InstanceType]
    provenance: list[str] = Field(default_factory=list, description="One line per file applied.")

    def get(self, name: str) -> InstanceType:
        """The instance type of that name (ConfigError if absent)."""
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise ConfigError(f"instance type {name!r} is not in the catalog", hint="add it with --catalog FILE")

    def names(self) -> list[str]:
        """Every instance type name, in catalog order."""
        return [i.name for i in self.instances]


def merge_catalog(base: Catalog, override: CatalogFile, label: str) -> Catalog:
    """Apply one override file to a catalog (semantics in the module docstring)."""
    current = [] if override.replace else list(base.instances)
    provenance = [] if override.replace else list(base.provenance)
    dropped = set(override.remove)
    unknown = dropped - {i.name for i in current}
    if unknown:
        raise ConfigError(f"{label}: 'remove' names instance types not in the catalog: {sorted(unknown)}")
    current = [i for i in current if i.name not in dropped]
    index = {inst.name: pos for pos, inst in enumerate(current)}
    for inst in override.instances:
        refuse_unservable(inst, label)
        if inst.name in index:
            current[index[inst.name]] = inst
        else:
            index[inst.name] = len(current)
            current.append(inst)
    where = ", ".join(x for x in (override.region, override.price_kind, override.as_of) if x)
    provenance.append(f"{label}" + (f" ({where})" if where else ""))
    return Catalog(instances=current, provenance=provenance)


def refuse_unservable(inst: InstanceType, label: str) -> None:
    """No plan may buy hardware the server cannot compute on: refuse such an entry (ConfigError)."""
    reason = unservable_reason(inst.target, inst.accelerator)
    if reason is not None:
        raise ConfigError(
            f"{label}: instance type {inst.name!r} (target {inst.target}, accelerator "
            f"{inst.accelerator or 'none'}) cannot be served by inferpack: {reason}",
            hint="remove the entry, or give it the target and accelerator its servers really use",
        )


def parse_catalog_file(text: str, label: str) -> CatalogFile:
    """Validate catalog JSON text; errors name the file."""
    return parse_json_model(text, CatalogFile, f"catalog {label}")


def default_catalog_text() -> str:
    """The shipped catalog's JSON text."""
    return resources.files("inferpack.planner").joinpath("data/instances.json").read_text()


def load_catalog(overrides: list[Path] | None = None, *, use_default: bool = True) -> Catalog:
    """The shipped catalog (unless `use_default` is False) with each override file applied in order."""
    catalog = Catalog(instances=[], provenance=[])
    if use_default:
        catalog = merge_catalog(catalog, parse_catalog_file(default_catalog_text(), "shipped"), "shipped")
    for path in overrides or []:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read catalog {path}: {exc}") from exc
        catalog = merge_catalog(catalog, parse_catalog_file(text, str(path)), str(path))
    if not catalog.instances:
        raise ConfigError("the instance catalog is empty")
    return catalog

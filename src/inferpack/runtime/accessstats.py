"""Per-model access statistics: how often and how recently each model was used, as decayed counts.

A model's count is multiplied by 1/2 every `half_life_s` and grows by one per use, so the count is the
number of recent uses with older ones weighing less: a frequency estimate that follows a shifting
popularity. The registry records every request here; the statistics rank models for a warm start (the
hottest that fit the budget load at start-up) and for the frequency-aware eviction policy. They are kept
for models that are not loaded too, so a model evicted and asked for again keeps its history.

Pure logic: times come from the caller (wall-clock seconds, so a count written by one process is aged
correctly by the next), and the file format is data in, data out (`to_json` / `from_json`).
"""

from __future__ import annotations

from dataclasses import dataclass

FORMAT_VERSION = 1


@dataclass
class Access:
    """One model's decayed use count as of `last_used` (wall-clock seconds)."""

    count: float
    last_used: float


class AccessStats:
    """Decayed use counts of models (see the module docstring)."""

    def __init__(self, half_life_s: float, entries: dict[str, Access] | None = None) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = half_life_s
        self._entries: dict[str, Access] = dict(entries or {})

    def _decay(self, since: float, now: float) -> float:
        return float(0.5 ** (max(0.0, now - since) / self.half_life_s))

    def record(self, model_id: str, now: float) -> None:
        """One use of `model_id` at `now`."""
        found = self._entries.get(model_id)
        if found is None:
            self._entries[model_id] = Access(1.0, now)
            return
        found.count = found.count * self._decay(found.last_used, now) + 1.0
        found.last_used = max(found.last_used, now)

    def score(self, model_id: str, now: float) -> float:
        """The model's decayed count at `now` (0 for a model never used)."""
        found = self._entries.get(model_id)
        return 0.0 if found is None else found.count * self._decay(found.last_used, now)

    def ranked(self, now: float) -> list[str]:
        """Models hottest first (ties: the more recently used first, then by id)."""
        return sorted(self._entries, key=lambda m: (-self.score(m, now), -self._entries[m].last_used, m))

    def __len__(self) -> int:
        return len(self._entries)

    def to_json(self, now: float, limit: int) -> dict[str, object]:
        """The `limit` hottest models' statistics, as the access statistics file holds them."""
        kept = self.ranked(now)[:limit]
        return {
            "version": FORMAT_VERSION,
            "half_life_s": self.half_life_s,
            "written_at": now,
            "models": {m: [round(self._entries[m].count, 6), self._entries[m].last_used] for m in kept},
        }

    @classmethod
    def from_json(cls, data: object, half_life_s: float) -> AccessStats:
        """Statistics from a file's content; ValueError saying what is wrong with it. The half-life is the
        current setting's (counts are stored as of their last use, so they age the same either way)."""
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not an access statistics file of format version {FORMAT_VERSION}")
        models = data.get("models")
        if not isinstance(models, dict):
            raise ValueError("'models' must map model ids to [count, last_used]")
        entries: dict[str, Access] = {}
        for model_id, value in models.items():
            if (
                not isinstance(value, list)
                or len(value) != 2
                or not all(isinstance(v, int | float) and v >= 0 for v in value)
            ):
                raise ValueError(f"model {model_id!r}: expected [count, last_used], got {value!r}")
            entries[str(model_id)] = Access(float(value[0]), float(value[1]))
        return cls(half_life_s, entries)

"""Load and scale testing: traffic over models, load shapes, workers, exact histogram aggregation, reports.

Modules by job: `traffic` (which model next), `shapes` (when to send), `targets` (where to send),
`protocol` (what to send), `histograms` (HDR recording and exact merging), `runner` (the async engine of
one worker), `result` (the JSON result and its aggregation), `local` (local worker processes), `display`
(rich tables and live progress), `report` (Markdown + PNG plots), `cli` (`inferpack bench`).
"""

from __future__ import annotations

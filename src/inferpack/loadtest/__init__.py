"""Load and scale testing: traffic over models, load shapes, workers, exact histogram aggregation, reports.

Modules by job: `traffic` (which model next), `shapes` (when to send), `targets` (where to send),
`protocol` (what to send), `histograms` (HDR recording and exact merging), `recorder` (one worker's
measurements), `runner` (the async engine of one worker), `ceiling` (the generator's own limit and its
warnings), `result` (the JSON result and its aggregation), `local` (local worker processes), `display`
(rich tables and live progress), `report` (Markdown + PNG plots), `cli` (`inferpack bench`).
"""

from __future__ import annotations

"""Keep the objects a process loads at start-up out of the garbage collector's way."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, the app, the catalog: hundreds of thousands)
    to the collector's permanent generation. A full collection otherwise walks all of them
    each time, a pause of ~50 ms in a worker relaying streams, which every token held in
    that moment waits for. Call once, when start-up is complete."""
    gc.collect()
    gc.freeze()

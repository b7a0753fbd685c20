from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _find_shared() -> Path:
    """The workspace's shared reference material (seeds, official OPEN-SCS and EPCIS files),
    which some tests read and the product never does: $LINEGATE_SHARED, else a `shared`
    folder beside the checkout (or beside its parent), else /work/shared."""
    env = os.environ.get("LINEGATE_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [ROOT.parent / "shared", ROOT.parent.parent / "shared", Path("/work/shared")]
    for candidate in candidates:
        if (candidate / "seeds").is_dir():
            return candidate
    return candidates[0]


SHARED = _find_shared()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

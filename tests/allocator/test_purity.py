"""The allocator is pure: importing it loads the standard library and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
before = set(sys.modules)
import allocator
loaded = sorted({name.split(".")[0] for name in set(sys.modules) - before})
print(json.dumps({"django": "django" in sys.modules, "loaded": loaded}))
"""


def imported_by_allocator() -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True
    )
    return dict(json.loads(run.stdout))


def test_it_does_not_import_django() -> None:
    assert imported_by_allocator()["django"] is False


def test_it_imports_only_the_standard_library() -> None:
    loaded = imported_by_allocator()["loaded"]
    assert isinstance(loaded, list)
    foreign = [name for name in loaded if name not in sys.stdlib_module_names]
    assert foreign == ["allocator"], foreign

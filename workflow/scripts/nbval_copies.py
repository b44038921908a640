"""Copy the executed notebooks of a results tree into a scratch folder for ``pytest --nbval-lax``.

Each copy gets its own folder (nbval runs a notebook in its folder, and ours write files there).
Fails when there is nothing to test, so that pytest's "no tests collected" (exit 5) cannot pass.
"""

import shutil
import sys
from pathlib import Path

root, scratch = Path(sys.argv[1]), Path(sys.argv[2])
notebooks = sorted(root.glob("*/*/*/notebook.ipynb"))
if not notebooks:
    sys.exit(f"nbval: no executed notebooks under {root}")
shutil.rmtree(scratch, ignore_errors=True)
for nb in notebooks:
    target = scratch / "__".join(nb.parent.relative_to(root).parts)
    target.mkdir(parents=True)
    shutil.copy(nb, target / "notebook.ipynb")
print(f"nbval: {len(notebooks)} notebooks copied to {scratch}")

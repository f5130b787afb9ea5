"""Write the tutorial notebooks in notebooks/ from the cell sources below (outputs stripped).

    python scripts/make_notebooks.py            # (re)write notebooks/*.ipynb
    python scripts/make_notebooks.py --check    # exit 1 if a committed notebook differs from this script

Edit the notebooks here, not in JupyterLab, so the committed files stay output-free and reviewable; the
cell sources live in scripts/notebooks/NN_name.py, one cell per ``# %%`` block (``# %% [markdown]``
for text, ``# %% [parameters]`` for the cell CI overrides), the "percent" format editors understand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "scripts" / "notebooks"
OUT = ROOT / "notebooks"

_HEADER = re.compile(r"^# %%(?: \[(markdown|parameters)\])?[ \t]*$", re.M)


def parse(text: str) -> list[tuple[str, str]]:
    """``# %%`` blocks -> [(kind, source)] with kind in code | markdown | parameters."""
    parts = _HEADER.split(text)
    cells = []
    # parts = [preamble, kind1, body1, kind2, body2, ...]
    for kind, body in zip(parts[1::2], parts[2::2]):
        body = body.strip("\n")
        kind = kind or "code"
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
        if body.strip():
            cells.append((kind, body))
    return cells


def build(source: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, body) in enumerate(parse(source.read_text())):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
        cell.id = f"{source.stem.split('_')[0]}-{i:02d}"  # stable ids: regenerating gives identical files
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that notebooks/ matches the sources")
    args = parser.parse_args(argv)
    stale = []
    for src in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        target = OUT / f"{src.stem}.ipynb"
        text = render(build(src))
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target)
        else:
            OUT.mkdir(exist_ok=True)
            target.write_text(text)
            print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print("out of date (run `python scripts/make_notebooks.py`): " + ", ".join(str(s) for s in stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

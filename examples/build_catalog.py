"""Build examples/catalog/ from the ABO sample products in ../shared/data/abo_samples.

Each product folder holds JPEGs and a ``metadata.txt`` in the ABO listings' Java-map-like
text form (``'bullet_point': '[{language_tag=en_US, value=...}, ...]'``). This script parses
brand, model name, style, colour and bullet points (English values preferred), copies the
images, and writes ``catalog.jsonl`` with relative image paths. The parser is hand-written:
there is no library for this format. Run it again only to regenerate the committed output::

    python examples/build_catalog.py [--source ../shared/data/abo_samples]
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRY = re.compile(r"\{language_tag=([^,]*), value=(.*?)\}(?=, \{language_tag=|\]$)", re.S)


def tagged_values(text: str) -> list[tuple[str, str]]:
    """'[{language_tag=en_US, value=a}, ...]' -> [("en_US", "a"), ...]"""
    return [(tag.strip(), value.strip()) for tag, value in ENTRY.findall(text.strip())]


def english(text: str) -> list[str]:
    """The English values of a field (every value if it has none in English)."""
    entries = tagged_values(text)
    chosen = [v for tag, v in entries if tag.startswith("en")] or [v for _, v in entries]
    return list(dict.fromkeys(chosen))


def product(folder: Path, images_dir: Path) -> dict:
    meta = ast.literal_eval(folder.joinpath("metadata.txt").read_text())
    first = {key: (english(meta.get(key, "")) or [""])[0] for key in ("brand", "model_name", "style", "color")}
    name = first["model_name"] or first["style"]
    title = " ".join(part for part in (first["brand"], name) if part)
    images = []
    for jpg in sorted(folder.glob("*.jpg")):
        target = images_dir / folder.name / jpg.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(jpg, target)
        images.append(str(target.relative_to(images_dir.parent)))
    return {
        "item_id": folder.name,
        "title": title,
        "brand": first["brand"],
        "color": first["color"],
        "bullet_points": english(meta.get("bullet_point", "")),
        "images": images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=HERE.parent.parent / "shared" / "data" / "abo_samples")
    parser.add_argument("--out", type=Path, default=HERE / "catalog")
    args = parser.parse_args()
    images_dir = args.out / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    rows = [product(folder, images_dir) for folder in sorted(args.source.iterdir()) if folder.is_dir()]
    with open(args.out / "catalog.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    shutil.copyfile(args.source / "README.md", args.out / "ABO_README.md")
    print(f"wrote {len(rows)} products, {sum(len(r['images']) for r in rows)} images to {args.out}")


if __name__ == "__main__":
    main()

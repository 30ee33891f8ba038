"""Build examples/catalog/ from the real sample media in ../shared/data.

Products: each ABO product folder holds JPEGs and a ``metadata.txt`` in the ABO listings'
Java-map-like text form (``'bullet_point': '[{language_tag=en_US, value=...}, ...]'``). This
script parses brand, model name, style, colour and bullet points (English values preferred),
copies the images, and makes a short product video from them (a slideshow: each photo held
one second, written with PyAV as H.264). The parser is hand-written: there is no library for
this format.

Sound clips: the two real recordings in ``../shared/data/audio`` (a robin's call, a read
passage of Sense and Sensibility) become items with a title and an ``audio`` column.

``catalog.jsonl`` gets relative media paths. Run it again only to regenerate the committed
output (it needs PyAV: ``pip install av``)::

    python examples/build_catalog.py [--source ../shared/data]
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


def slideshow(images: list[Path], out: Path, *, size=(320, 240), fps: int = 10) -> None:
    """A product video: each photo letterboxed on white and held one second."""
    import fractions

    import av
    import numpy as np
    from PIL import Image, ImageOps

    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, fps)
        for path in images:
            photo = ImageOps.pad(Image.open(path).convert("RGB"), size, color="white")
            frame = av.VideoFrame.from_ndarray(np.asarray(photo), format="rgb24")
            for _ in range(fps):
                container.mux(stream.encode(frame))
        container.mux(stream.encode())


SOUND_CLIPS = {  # file in ../shared/data/audio -> (item_id, title)
    "456440__inspectorj__bird-whistling-robin-single-13.ogg": (
        "sound-robin-13",
        "Bird whistling: a single chirping call of an English robin (InspectorJ)",
    ),
    "198-209-0000.ogg": (
        "audiobook-198-209",
        "Sense and Sensibility, chapter 18, by Jane Austen: read by Heather Barnett",
    ),
}


def sound_clip(source: Path, audio_dir: Path) -> dict:
    item_id, title = SOUND_CLIPS[source.name]
    audio_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, audio_dir / source.name)
    shutil.copyfile(source.with_suffix(".txt"), audio_dir / source.with_suffix(".txt").name)  # its credit
    return {"item_id": item_id, "title": title, "audio": f"audio/{source.name}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE / "catalog")
    args = parser.parse_args()
    products = args.source / "abo_samples"
    for folder in ("images", "videos", "audio"):
        if (args.out / folder).exists():
            shutil.rmtree(args.out / folder)
    rows = [product(folder, args.out / "images") for folder in sorted(products.iterdir()) if folder.is_dir()]
    for row in rows:
        video = f"videos/{row['item_id']}.mp4"
        slideshow([args.out / image for image in row["images"]], args.out / video)
        row["video"] = video
    rows += [sound_clip(args.source / "audio" / name, args.out / "audio") for name in sorted(SOUND_CLIPS)]
    with open(args.out / "catalog.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    shutil.copyfile(products / "README.md", args.out / "ABO_README.md")
    print(
        f"wrote {len(rows)} items ({sum(len(r.get('images', [])) for r in rows)} images, "
        f"{sum('video' in r for r in rows)} videos, {sum('audio' in r for r in rows)} sound clips) to {args.out}"
    )


if __name__ == "__main__":
    main()

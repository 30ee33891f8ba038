"""The caption stand-ins shared by the caption tests: each family written once per test session
(seed 0) into one folder under the session's base temporary directory, whichever test file asks
first (``write_tiny_captioner`` keeps a complete folder)."""

from __future__ import annotations

from pathlib import Path

#: every family with a stand-in (extractors/standins/caption.py)
ALL_FAMILIES = (
    "llava",
    "blip2",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava_onevision",
    "smolvlm",
    "gemma3",
    "internvl",
    "idefics3",
)


def standin(tmp_path_factory, family: str) -> str:
    """The folder of ``family``'s tiny seeded captioner, written on first use in this session."""
    from itemlens.extractors.standins.caption import write_tiny_captioner

    root = Path(tmp_path_factory.getbasetemp()) / "caption-standins"
    root.mkdir(exist_ok=True)
    return str(write_tiny_captioner(family, root / family))

"""Seeded stand-in checkpoints for tests and the offline demo.

Where real weights cannot be had (no hub access), tests and the demo build a small
architecture from a config file, give it seeded random weights, save them as a checkpoint,
and load that checkpoint back through the encoder's real loading path. The numbers mean
nothing; the code path is the real one. Nothing in the pipeline ever calls this: a feature
whose weights are missing is an error, never a silent stand-in.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_open_clip_checkpoint(config_file: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> Path:
    """Register ``config_file`` with open_clip, initialise that architecture with ``seed`` and
    save its weights to ``out`` (safetensors). Returns ``out``; an existing file is kept."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    config_file = Path(config_file).resolve()
    if out.is_file():
        return out
    open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(config_file.stem)  # random init on purpose: this *is* the stand-in
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out)
    return out

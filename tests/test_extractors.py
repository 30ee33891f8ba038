"""Encoders give what their own libraries give, and never run on weights they did not find."""

import numpy as np
import pytest

from itemlens.errors import ConfigError, MissingDependencyError, WeightsNotFoundError
from itemlens.extractors import FeatureSpec, build_encoder, encoder_class, register_encoder
from itemlens.extractors.images import decode_image
from itemlens.extractors.text import TextTemplate

from .conftest import EXAMPLE_CATALOG


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_sentence_transformers_vectors_equal_the_library_encode(minilm_path, example_rows):
    from sentence_transformers import SentenceTransformer

    template = TextTemplate("{title}. {bullet_points}")
    texts = [template.render(r) for r in example_rows] + [
        "a red chair",
        "Vitamin E capsules, 400 IU",
        "yoga",
        "x " * 300,
    ]  # the last one is truncated
    for normalize in (True, False):
        spec = FeatureSpec(
            encoder="sentence-transformers", model=minilm_path, input={"template": "{t}"}, normalize=normalize
        )
        ours = build_encoder(spec).load("cpu").encode_texts(texts)
        theirs = SentenceTransformer(minilm_path, device="cpu").encode(texts, normalize_embeddings=normalize)
        assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
        assert _cosines(ours, theirs).min() >= 0.99999
        if normalize:  # (this model ends in a Normalize module anyway; the library decides)
            assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_open_clip_image_vectors_equal_the_library_encode_image(tiny_clip):
    import open_clip
    import torch
    from PIL import Image

    paths = sorted((EXAMPLE_CATALOG.parent / "images").rglob("*.jpg"))[:5]
    encoder = build_encoder(FeatureSpec(**tiny_clip, input={"image": "images"})).load("cpu")
    transform = encoder.image_transform()
    ours = encoder.encode_images(np.stack([transform(decode_image(p.read_bytes())) for p in paths]))

    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=tiny_clip["checkpoint"])
    model.eval()
    with torch.no_grad():
        theirs = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in paths]))
        theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
    assert ours.shape == (5, 32)
    assert _cosines(ours, theirs).min() >= 0.9999


def test_open_clip_text_tower_matches_encode_text(tiny_clip):
    import open_clip
    import torch

    encoder = build_encoder(FeatureSpec(**tiny_clip, input={"template": "{title}"})).load("cpu")
    texts = ["a grey yoga bag", "LED bulb"]
    model = open_clip.create_model("tiny-clip", pretrained=tiny_clip["checkpoint"]).eval()
    with torch.no_grad():
        theirs = model.encode_text(open_clip.get_tokenizer("tiny-clip")(texts))
        theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
    assert _cosines(encoder.encode_texts(texts), theirs).min() >= 0.9999


def test_missing_weights_say_where_they_looked(tmp_path, tiny_clip):
    tag = build_encoder(
        FeatureSpec(encoder="open-clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k", input={"image": "i"})
    )
    with pytest.raises(WeightsNotFoundError) as info:
        tag.check_weights()
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(info.value)
    assert "Hugging Face cache" in str(info.value) and "HF_HUB_OFFLINE=1" in str(info.value)
    with pytest.raises(WeightsNotFoundError):  # loading fails the same way: no random weights
        tag.load("cpu")

    # weights in the cache under the name open_clip's download gives them: found
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "open_clip_model.safetensors").write_bytes(b"weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        tag.check_weights()

    missing = tmp_path / "nope.safetensors"
    ckpt = build_encoder(FeatureSpec(**{**tiny_clip, "checkpoint": str(missing)}, input={"image": "i"}))
    with pytest.raises(WeightsNotFoundError, match=str(missing)):
        ckpt.load("cpu")

    hub = build_encoder(
        FeatureSpec(encoder="sentence-transformers", model="sentence-transformers/nope-v1", input={"template": "{t}"})
    )
    with pytest.raises(WeightsNotFoundError, match="sentence-transformers/nope-v1.*Hugging Face cache"):
        hub.load("cpu")
    folder = build_encoder(FeatureSpec(encoder="sentence-transformers", model=str(tmp_path), input={"template": "{t}"}))
    with pytest.raises(WeightsNotFoundError, match="modules.json or config.json"):
        folder.load("cpu")


def test_a_checkpoint_that_does_not_fit_the_architecture_is_an_error(tmp_path, tiny_clip):
    import torch
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(1)}, str(wrong))
    encoder = build_encoder(FeatureSpec(**{**tiny_clip, "checkpoint": str(wrong)}, input={"image": "i"}))
    with pytest.raises(RuntimeError, match="state_dict|size mismatch|Missing key"):
        encoder.load("cpu")


def test_fingerprint_follows_the_output_not_the_execution(tmp_path, tiny_clip, minilm_path):
    def fp(**changes):
        spec = {**tiny_clip, "input": {"image": "images"}, **changes}
        return build_encoder(FeatureSpec(**spec)).fingerprint()

    base = fp()
    assert fp(resources={"num_gpus": 0, "batch_size": 3}) == base
    assert fp(note="hello", precision="fp32") == base
    assert fp(normalize=False) != base
    assert fp(dtype="float16") != base
    assert fp(pooling="per_image") != base
    assert fp(input={"image": "other_column"}) != base
    # a checkpoint is identified by its content, not its path
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(open(tiny_clip["checkpoint"], "rb").read())
    assert fp(checkpoint=str(copy)) == base
    from itemlens.extractors.standins.clip import write_open_clip_checkpoint

    other = write_open_clip_checkpoint(tiny_clip["model_config_file"], tmp_path / "seed1.safetensors", seed=1)
    assert fp(checkpoint=str(other)) != base


def test_two_architecture_files_of_one_name_do_not_take_each_others_place(tmp_path, tiny_clip):
    """open_clip registers architectures by file stem: a second tiny-clip.json (another size)
    used by another feature must not change what the first feature builds or its fingerprint."""
    import json

    from itemlens.extractors.standins.clip import write_open_clip_checkpoint

    wide = json.loads(open(tiny_clip["model_config_file"]).read())
    wide["embed_dim"] = 48
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "tiny-clip.json").write_text(json.dumps(wide))
    checkpoint = write_open_clip_checkpoint(tmp_path / "v2" / "tiny-clip.json", tmp_path / "v2" / "w.safetensors")
    first = build_encoder(FeatureSpec(**tiny_clip, input={"image": "images"}))
    before = first.fingerprint()
    other = {**tiny_clip, "model_config_file": str(tmp_path / "v2" / "tiny-clip.json"), "checkpoint": str(checkpoint)}
    second = build_encoder(FeatureSpec(**other, input={"image": "images"})).load("cpu")
    assert second.dim == 48
    again = build_encoder(FeatureSpec(**tiny_clip, input={"image": "images"}))
    assert again.fingerprint() == before and again.load("cpu").dim == 32


def test_registry_is_lazy_and_refuses_silent_replacement(monkeypatch):
    from itemlens.extractors import registry

    # the plug-in registered below must not outlive this test (the registry is process-wide)
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    assert encoder_class("open-clip").name == "open-clip"
    with pytest.raises(ConfigError, match="unknown encoder 'nope'"):
        encoder_class("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("open-clip", "somewhere.else:Encoder")
    register_encoder("not-installed", "itemlens_missing_plugin.module:Encoder", extra="fancy")
    with pytest.raises(MissingDependencyError, match=r"pip install 'itemlens\[fancy\]'"):
        encoder_class("not-installed")


def test_a_model_folders_digest_covers_linked_sub_folders_and_is_unchanged_without_them(tmp_path):
    from itemlens.extractors.weights import folder_digest

    model, dense = tmp_path / "model", tmp_path / "dense-weights"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "1_Pooling" / "config.json").write_text('{"mean": true}')
    plain = folder_digest(model)
    # the digest of a folder without links is the one stores already hold (rglob order, rglob files)
    import hashlib

    from itemlens.extractors.weights import file_digest

    h = hashlib.sha256()
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(model)).encode() + b"\0" + file_digest(file).encode() + b"\n")
    assert plain == h.hexdigest()
    dense.mkdir()
    (dense / "model.safetensors").write_bytes(b"weights v1")
    (model / "2_Dense").symlink_to(dense, target_is_directory=True)
    (model / "2_Dense" / "loop").symlink_to(model, target_is_directory=True)  # a cycle is walked once
    linked = folder_digest(model)
    (dense / "model.safetensors").write_bytes(b"weights v2")  # retrained, behind the link
    assert len({plain, linked, folder_digest(model)}) == 3

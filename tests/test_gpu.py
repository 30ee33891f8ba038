"""GPU paths: mixed precision gives the fp32 vectors to within its rounding."""

import numpy as np
import pytest

from itemlens.extractors import FeatureSpec, build_encoder

from .conftest import EXAMPLE_CATALOG

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_mixed_precision_matches_fp32_on_cuda(minilm_path, tiny_clip, precision):
    from itemlens.extractors.images import decode_image

    texts = ["a grey yoga bag", "LED bulb, 400 lumens", "vitamin E"]
    text = {"encoder": "sentence-transformers", "model": minilm_path, "input": {"template": "{t}"}}
    full = build_encoder(FeatureSpec(**text, precision="fp32")).load("cuda").encode_texts(texts)
    mixed = build_encoder(FeatureSpec(**text, precision=precision)).load("cuda").encode_texts(texts)
    assert ((full * mixed).sum(1)).min() > 0.999

    paths = sorted((EXAMPLE_CATALOG.parent / "images").rglob("*.jpg"))[:4]
    encoder = build_encoder(FeatureSpec(**tiny_clip, input={"image": "i"}, precision="fp32")).load("cuda")
    pixels = np.stack([encoder.image_transform()(decode_image(p.read_bytes())) for p in paths])
    full = encoder.encode_images(pixels)
    mixed = build_encoder(FeatureSpec(**tiny_clip, input={"image": "i"}, precision=precision)).load("cuda")
    assert ((full * mixed.encode_images(pixels)).sum(1)).min() > 0.999

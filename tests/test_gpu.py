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


def test_knn_on_cuda_gives_the_cpu_lists():
    """The GPU path of the graphs' kNN (fp32 products, torch top-k and merges) against the CPU
    path (numba kernels): exact lists, a refresh's search and some rows' lists."""
    from itemlens.store.graphs import knn

    rng = np.random.default_rng(4)
    x = rng.normal(size=(5000, 64)).astype(np.float32)
    x[3] = 0
    for self_loops in (True, False):
        cpu, cpu_scores = knn.exact_knn(x, 10, self_loops=self_loops, block=1024)
        gpu, gpu_scores = knn.exact_knn(x, 10, self_loops=self_loops, block=1024, device="cuda")
        assert np.array_equal(cpu, gpu)
        assert np.abs(cpu_scores - gpu_scores)[np.isfinite(cpu_scores)].max() < 1e-5
    sources = np.sort(rng.choice(5000, 100, replace=False))
    floor = np.full(5000, 0.3, np.float32)
    floor[sources] = np.inf
    on_cpu = knn.search_from(x, sources, 10, row_floor=floor, block=1024)
    on_gpu = knn.search_from(x, sources, 10, row_floor=floor, block=1024, device="cuda")
    for (a, _), (b, _) in zip(on_cpu, on_gpu):
        assert np.array_equal(a, b)
    assert np.array_equal(knn.knn_rows(x, sources, 10)[0], knn.knn_rows(x, sources, 10, device="cuda")[0])

"""Configuration errors name the field, the bad value and what is allowed, before any work."""

import pytest

from itemlens.errors import ConfigError
from itemlens.extractors import FeatureSpec, build_encoder
from itemlens.workflows.config import load_config


def _features(**spec) -> dict:
    base = {"encoder": "sentence-transformers", "model": "m", "input": {"template": "{title}"}}
    return {"features": {"text": {**base, **spec}}}


@pytest.mark.parametrize("spec, expected", [
    ({"pooling": "avg"}, ["features.text.pooling", "'avg'", "'mean'", "'per_image'"]),
    ({"dtype": "int8"}, ["features.text.dtype", "'int8'", "'float32'", "'float16'"]),
    ({"encoder": "clip"}, ["features.text.encoder", "'clip'", "open-clip", "sentence-transformers"]),
    ({"normalise": True}, ["features.text.normalise", "unknown field"]),
    ({"input": {"column": "title"}}, ["features.text.input", "template", "image"]),
    ({"input": {"template": "{}"}}, ["features.text.input", "column names"]),
    ({"resources": {"num_gpus": -1}}, ["features.text.resources.num_gpus", "-1", "greater than or equal to 0"]),
])
def test_invalid_fields_are_named_with_value_and_choices(spec, expected):
    with pytest.raises(ConfigError) as info:
        load_config(_features(**spec))
    for fragment in expected:
        assert fragment in str(info.value)


def test_feature_names_and_at_least_one_feature():
    with pytest.raises(ConfigError, match="at least 1"):
        load_config({"features": {}})
    with pytest.raises(ConfigError, match="feature name 'image-2'"):
        load_config({"features": {"image-2": _features()["features"]["text"]}})


def test_yaml_file_errors_and_relative_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    good = tmp_path / "conf" / "lens.yaml"
    good.parent.mkdir()
    good.write_text(
        "features:\n  image:\n    encoder: open-clip\n    model: tiny-clip\n"
        "    checkpoint: weights/w.safetensors\n    model_config_file: ../arch/tiny-clip.json\n"
        "    input: {image: images}\n")
    spec = load_config(good).features["image"]
    assert spec.checkpoint == str(tmp_path / "conf" / "weights" / "w.safetensors")
    assert spec.model_config_file == str(tmp_path / "arch" / "tiny-clip.json")


def test_encoder_specific_rules():
    with pytest.raises(ConfigError, match="never encodes with random weights"):
        build_encoder(FeatureSpec(encoder="open-clip", model="ViT-B-32", input={"image": "images"}))
    with pytest.raises(ConfigError, match="does not use 'pretrained'"):
        build_encoder(FeatureSpec(encoder="sentence-transformers", model="m", pretrained="x",
                                  input={"template": "{t}"}))
    with pytest.raises(ConfigError, match="cannot encode image input"):
        build_encoder(FeatureSpec(encoder="sentence-transformers", model="m", input={"image": "images"}))
    with pytest.raises(ConfigError, match="no pretrained tag 'nope'.*laion2b_s34b_b79k"):
        build_encoder(FeatureSpec(encoder="open-clip", model="ViT-B-32", pretrained="nope",
                                  input={"image": "i"})).fingerprint()
    with pytest.raises(ConfigError, match="no model 'ViT-B-33'.*ViT-B-32"):
        build_encoder(FeatureSpec(encoder="open-clip", model="ViT-B-33", pretrained="x",
                                  input={"image": "i"})).fingerprint()


def test_templates_use_plain_column_names():
    with pytest.raises(ConfigError, match=r"\{meta.brand\} reaches into a column"):
        load_config(_features(input={"template": "{meta.brand}"}))
    with pytest.raises(ConfigError, match=r"\{tags\[0\]\} reaches into a column"):
        load_config(_features(input={"template": "{tags[0]}"}))


def test_remote_catalog_folders_and_files():
    from itemlens.workflows.catalog import CatalogSource
    from itemlens.workflows.config import CatalogConfig

    folder = CatalogSource.open("s3://bucket/catalog", CatalogConfig(format="parquet"))
    assert folder.base == "s3://bucket/catalog"
    file = CatalogSource.open("s3://bucket/catalog/items.jsonl", CatalogConfig())
    assert (file.base, file.format) == ("s3://bucket/catalog", "jsonl")
    with pytest.raises(ConfigError, match="set catalog.format"):
        CatalogSource.open("s3://bucket/catalog", CatalogConfig())

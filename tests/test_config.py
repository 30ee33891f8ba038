"""Configuration errors name the field, the bad value and what is allowed, before any work."""

import pytest
from pydantic import ValidationError

from itemlens.errors import ConfigError
from itemlens.extractors import FeatureSpec, build_encoder
from itemlens.workflows.config import load_config


def _features(**spec) -> dict:
    base = {"encoder": "sentence-transformers", "model": "m", "input": {"template": "{title}"}}
    return {"features": {"text": {**base, **spec}}}


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"pooling": "avg"}, ["features.text.pooling", "'avg'", "'mean'"]),
        (
            {"pretrained": "x"},
            [
                "features.text.pretrained",
                "unknown field for encoder 'sentence-transformers'",
                "its own options: revision, trust_remote_code, max_seq_length",
            ],
        ),
        ({"dtype": "int8"}, ["features.text.dtype", "'int8'", "'float32'", "'float16'"]),
        ({"encoder": "clip"}, ["features.text.encoder", "'clip'", "open-clip", "sentence-transformers"]),
        ({"normalise": True}, ["features.text.normalise", "unknown field", "did you mean 'normalize'?"]),
        ({"input": {"column": "title"}}, ["features.text.input", "template", "image"]),
        ({"input": {"template": "{}"}}, ["features.text.input", "column names"]),
        ({"resources": {"num_gpus": -1}}, ["features.text.resources.num_gpus", "-1", "greater than or equal to 0"]),
    ],
)
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
        "    input: {image: images}\n"
    )
    spec = load_config(good).features["image"]
    assert spec.checkpoint == str(tmp_path / "conf" / "weights" / "w.safetensors")
    assert spec.model_config_file == str(tmp_path / "arch" / "tiny-clip.json")


def test_encoder_specific_rules():
    with pytest.raises(ConfigError, match="never encodes with random weights"):
        build_encoder(
            FeatureSpec.model_validate(dict(encoder="open-clip", model="ViT-B-32", input={"image": "images"}))
        )
    with pytest.raises(ValidationError, match="pretrained"):  # each encoder's spec holds its own options
        FeatureSpec.model_validate(
            dict(encoder="sentence-transformers", model="m", pretrained="x", input={"template": "{t}"})
        )
    with pytest.raises(ValidationError, match="'mean' or 'per_image'"):
        FeatureSpec.model_validate(
            dict(encoder="open-clip", model="ViT-B-32", pretrained="x", pooling="per_frame", input={"image": "images"})
        )
    for encoder, pooling in (("open-clip", "per_image"), ("video-frames", "per_frame")):
        with pytest.raises(ConfigError, match=f"text input and pooling '{pooling}': a text is one vector"):
            build_encoder(
                FeatureSpec.model_validate(
                    dict(encoder=encoder, model="ViT-B-32", pretrained="x", pooling=pooling, input={"template": "{t}"})
                )
            )
    with pytest.raises(ConfigError, match="cannot encode image input"):
        build_encoder(
            FeatureSpec.model_validate(dict(encoder="sentence-transformers", model="m", input={"image": "images"}))
        )
    with pytest.raises(ConfigError, match="no pretrained tag 'nope'.*laion2b_s34b_b79k"):
        build_encoder(
            FeatureSpec.model_validate(
                dict(encoder="open-clip", model="ViT-B-32", pretrained="nope", input={"image": "i"})
            )
        ).fingerprint()
    with pytest.raises(ConfigError, match="no model 'ViT-B-33'.*ViT-B-32"):
        build_encoder(
            FeatureSpec.model_validate(
                dict(encoder="open-clip", model="ViT-B-33", pretrained="x", input={"image": "i"})
            )
        ).fingerprint()


def test_templates_use_plain_column_names():
    with pytest.raises(ConfigError, match=r"\{meta.brand\} reaches into a column"):
        load_config(_features(input={"template": "{meta.brand}"}))
    with pytest.raises(ConfigError, match=r"\{tags\[0\]\} reaches into a column"):
        load_config(_features(input={"template": "{tags[0]}"}))
    # repr() of a cell, and fields inside a format spec, are refused before any work
    with pytest.raises(ConfigError, match=r"\{title!r\} is not supported"):
        load_config(_features(input={"template": "{title!r}"}))
    with pytest.raises(ConfigError, match=r"a field inside a format spec"):
        load_config(_features(input={"template": "{title:<{width}}"}))
    load_config(_features(input={"template": "{title!s} {price:>8.2f}"}))


def test_remote_catalog_folders_and_files():
    from itemlens.workflows.catalog import CatalogSource
    from itemlens.workflows.config import CatalogConfig

    folder = CatalogSource.open("s3://bucket/catalog", CatalogConfig(format="parquet"))
    assert folder.base == "s3://bucket/catalog"
    file = CatalogSource.open("s3://bucket/catalog/items.jsonl", CatalogConfig())
    assert (file.base, file.format) == ("s3://bucket/catalog", "jsonl")
    with pytest.raises(ConfigError, match="from a folder on object storage; set catalog.format"):
        CatalogSource.open("s3://bucket/catalog", CatalogConfig())


def test_a_catalog_folder_is_the_files_its_reader_reads(tmp_path):
    """In a folder, the pin and the bad-file message see what Ray's reader reads: the format's
    files, not ``_SUCCESS``, checksums, a README or the media kept beside them."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from itemlens.workflows.catalog import CatalogSource
    from itemlens.workflows.config import CatalogConfig

    folder = tmp_path / "catalog"
    (folder / "images").mkdir(parents=True)
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-0.parquet.crc").write_bytes(b"crc")
    (folder / "README.md").write_text("# the catalog")
    (folder / "images" / "a.jpg").write_bytes(b"\xff\xd8")
    pq.write_table(pa.table({"item_id": ["a"]}), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1 cut short")

    source = CatalogSource.open(folder, CatalogConfig())  # the format from the files Ray reads
    assert source.format == "parquet"
    assert [Path(path).name for path, _ in source.files()] == ["part-0.parquet", "part-1.parquet"]
    assert source.diagnose().startswith(f"{folder / 'part-1.parquet'}: ")  # not _SUCCESS, not the README
    pin = source.pin()
    (folder / "images" / "a.jpg").write_bytes(b"\xff\xd8 re-encoded")  # media and notes beside the rows:
    (folder / "README.md").write_text("# edited")  # the catalog did not change
    pin.check(source, "after the edits")
    assert CatalogSource.open(folder / "_SUCCESS", CatalogConfig(format="jsonl")).files()  # a file named is read


def test_a_delta_row_with_an_empty_op_cell_is_an_upsert():
    """A CSV delta's empty _op cell reads as "" (not null): it is a row without an operation."""
    import pyarrow as pa

    from itemlens.workflows.catalog import _ops_of, _upserts

    block = pa.table({"item_id": ["1", "2", "3"], "title": ["new", None, "other"], "_op": ["", " Delete", "upsert"]})
    assert _ops_of(block, id_column="item_id").column("op").to_pylist() == ["upsert", "delete", "upsert"]
    assert _upserts(block, columns=["item_id", "title"]).column("item_id").to_pylist() == ["1", "3"]


def test_report_and_encode_log_paths_expand_a_home_folder(monkeypatch, tmp_path):
    """`--report=~/r.json` reaches argparse with its ~ (no shell expands it there)."""
    from itemlens.workflows.cli import build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args(
        ["ingest", "c.jsonl", "--config", "c.yaml", "--store", "lens", "--report=~/r.json", "--encode-log=~/audit"]
    )
    assert (args.report, args.encode_log) == (str(tmp_path / "r.json"), str(tmp_path / "audit"))


def test_folder_formats_are_told_from_the_files_read_and_a_folder_without_any_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from itemlens.errors import CatalogError
    from itemlens.workflows.catalog import CatalogSource
    from itemlens.workflows.config import CatalogConfig

    hive = tmp_path / "hive" / "date=2024-01-01"
    hive.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ["a"]}), hive / "part-0.parquet")
    (tmp_path / "hive" / "_SUCCESS").write_text("")
    assert CatalogSource.open(tmp_path / "hive", CatalogConfig()).format == "parquet"  # found in a subfolder
    (tmp_path / "hive" / "dataset_info.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds jsonl and parquet files; set catalog.format"):
        CatalogSource.open(tmp_path / "hive", CatalogConfig())
    assert CatalogSource.open(tmp_path / "hive", CatalogConfig(format="parquet")).format == "parquet"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match=r"holds no Parquet, JSONL or CSV files"):
        CatalogSource.open(tmp_path / "empty", CatalogConfig())
    (tmp_path / "nd").mkdir()
    (tmp_path / "nd" / "items.ndjson").write_text('{"item_id": "a"}\n')
    with pytest.raises(CatalogError, match=r"holds no jsonl files \(the jsonl reader reads .jsonl, .json"):
        CatalogSource.open(tmp_path / "nd", CatalogConfig(format="jsonl"))


def test_a_remote_catalogs_bad_line_is_named_with_its_uri():
    """Files on object storage are listed with their scheme, so the diagnosis reads them there."""
    import fsspec

    from itemlens.workflows.catalog import CatalogSource
    from itemlens.workflows.config import CatalogConfig

    fs = fsspec.filesystem("memory")
    fs.pipe("/review-bucket/catalog/a.jsonl", b'{"item_id": "a"}\n{"item_id": \n')
    source = CatalogSource.open("memory://review-bucket/catalog", CatalogConfig(format="jsonl"))
    [(path, _)] = source.files()
    assert path.startswith("memory://") and path.endswith("review-bucket/catalog/a.jsonl")
    assert source.diagnose().startswith(f"{path}, line 2: not valid JSON")


def test_json_lines_keep_the_json_types_of_their_values(tmp_path):
    """Ids and text that look like numbers or dates stay the strings the file holds (pandas'
    type guessing, which Ray's own JSON-lines reader keeps on, made "00123" the number 123)."""
    import pyarrow.fs

    from itemlens.workflows import catalog

    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": "00123", "sku": "000042", "added": "2024-01-01", "price": 9.5}\n'
        '{"item_id": "007", "sku": "1e3", "added": "2024-01-02", "price": 3}\n'
        '{"item_id": "7", "sku": null}\n'
    )
    source = catalog._json_lines(str(path), None)
    with pyarrow.fs.LocalFileSystem().open_input_stream(str(path)) as f:
        rows = [row for frame in source._read_stream(f, str(path)) for row in frame.to_dict("records")]
    assert [r["item_id"] for r in rows] == ["00123", "007", "7"]
    assert [r["sku"] for r in rows[:2]] == ["000042", "1e3"] and rows[0]["added"] == "2024-01-01"
    assert rows[0]["price"] == 9.5


def test_a_block_without_an_optional_column_gives_nulls_for_it(tmp_path):
    """A chunk of lines none of which has a sparse key is a block without that column: the
    selection of columns is per block, with nulls, not a crash of the read task."""
    import pyarrow as pa
    import pyarrow.fs

    from itemlens.workflows import catalog

    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": "a", "title": "t"}\n{"item_id": "b", "title": "u"}\n{"item_id": "c", "video": "c.mp4"}\n'
    )

    def blocks(**options):
        source = catalog._json_lines(str(path), None, chunk_rows=2, **options)
        with pyarrow.fs.LocalFileSystem().open_input_stream(str(path)) as f:
            return [pa.Table.from_pandas(frame, preserve_index=False) for frame in source._read_stream(f, str(path))]

    assert [b.column_names for b in blocks()] == [["item_id", "title"], ["item_id", "video"]]
    assert [b.to_pylist() for b in blocks(columns=["item_id", "video"])] == [
        [{"item_id": "a", "video": None}, {"item_id": "b", "video": None}],
        [{"item_id": "c", "video": "c.mp4"}],
    ]


def _caption_config(**extra_features) -> dict:
    caption = {"encoder": "caption", "model": "m", "input": {"image": "images"}}
    text = {"encoder": "sentence-transformers", "model": "m", "input": "caption"}
    return {"features": {"caption_text": text, "caption": caption, **extra_features}}


def test_video_audio_and_caption_inputs_parse_with_their_settings():
    cfg = load_config(
        {
            "features": {
                "video": {
                    "encoder": "video-frames",
                    "model": "m",
                    "checkpoint": "w",
                    "pooling": "per_frame",
                    "input": {"video": "clip", "frames": 4, "every_seconds": 0.5},
                },
                "audio": {"encoder": "audio", "model": "m", "input": {"audio": "sound"}, "window_seconds": 5},
            }
        }
    )
    assert cfg.features["video"].input.kind == "video" and cfg.features["video"].input.frames == 4
    assert cfg.features["audio"].input.columns == ["sound"]
    # `input: caption` is short for `input: {feature: caption}`; captions run first
    cfg = load_config(_caption_config())
    assert cfg.features["caption_text"].input.feature == "caption"
    assert [name for name, _ in cfg.feature_order()] == ["caption", "caption_text"]


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            {"features": {"t": {"encoder": "sentence-transformers", "model": "m", "input": "nope"}}},
            ["features.t.input", "'nope' is not a caption feature", "caption features: none"],
        ),
        (_caption_config(), None),
        (
            {**_caption_config(), "semantic_ids": {"sid": {"features": ["caption"]}}},
            ["semantic_ids.sid.features", "'caption' holds captions"],
        ),
        (
            {
                "features": {
                    "v": {
                        "encoder": "video-frames",
                        "model": "m",
                        "checkpoint": "w",
                        "input": {"video": "clip", "frames": 0},
                    }
                }
            },
            ["features.v.input", "frames", "greater than or equal to 1"],
        ),
        (
            {"features": {"v": {"encoder": "open-clip", "model": "m", "checkpoint": "w", "input": {"video": "clip"}}}},
            ["features.v", "cannot encode video input"],
        ),
        (
            {"features": {"a": {"encoder": "audio", "model": "m", "input": {"audio": "a"}, "prompt": "hi"}}},
            ["features.a.prompt", "unknown field for encoder 'audio'", "window_seconds"],
        ),
    ],
)
def test_inputs_that_cannot_work_are_refused_before_any_work(config, expected):
    if expected is None:
        load_config(config)
        return
    with pytest.raises(ConfigError) as info:
        load_config(config)
    for fragment in expected:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            {
                "encoder": "sentence-transformers",
                "model": "m",
                "input": {"template": "{t}"},
                "max_seq_length": 128,
                "dtype": "float16",
                "normalize": False,
            },
            "e7e43f24b38ed64a",
        ),
        (
            {
                "encoder": "hf-text",
                "model": "m",
                "input": {"template": "{t}"},
                "token_pooling": "last_token",
                "instruction": "q: ",
                "trust_remote_code": True,
            },
            "f39e638de12b8511",
        ),
        (
            {
                "encoder": "open-clip",
                "model": "ViT-B-32",
                "pretrained": "x",
                "input": {"image": "images"},
                "pooling": "per_image",
            },
            "4671f72a28d38f8b",
        ),
        (
            {
                "encoder": "video-frames",
                "model": "ViT-B-32",
                "pretrained": "x",
                "input": {"video": "v", "frames": 4, "every_seconds": 2},
                "pooling": "per_frame",
            },
            "34ee9efe42c5d6c0",
        ),
        ({"encoder": "audio", "model": "m", "input": {"audio": "a"}, "window_seconds": 5}, "8719af4a7018b233"),
        (
            {
                "encoder": "caption",
                "model": "m",
                "input": {"image": "images"},
                "prompt": "Say",
                "max_new_tokens": 20,
                "num_beams": 2,
            },
            "88d6b4b8f8f14308",
        ),
    ],
)
def test_fingerprints_of_existing_stores_do_not_move(spec, expected):
    """The values the fingerprint had when every option lived on one spec model: moving the
    options into each encoder's own spec keeps the versions of the stores written before (a
    changed fingerprint would re-encode a whole catalog after an upgrade)."""
    from itemlens.extractors.spec import fingerprint

    assert fingerprint(FeatureSpec.model_validate(spec), "weights", "enc/1") == expected


def test_a_report_file_that_cannot_be_written_is_an_error_before_the_job(tmp_path, capsys):
    from itemlens.workflows.cli import main

    command = ["ingest", str(tmp_path / "catalog.jsonl"), "--config", str(tmp_path / "lens.yaml")]
    command += ["--store", str(tmp_path / "lens")]
    for report, why in (
        (tmp_path / "no-such-folder" / "r.json", "does not exist"),
        (tmp_path, "is a folder"),
    ):
        assert main([*command, "--report", str(report)]) == 2
        assert why in capsys.readouterr().err
    assert not (tmp_path / "lens").exists()  # nothing started: no store, no Ray


def test_commands_that_change_a_store_refuse_a_path_without_one(tmp_path, capsys):
    from itemlens.workflows.cli import main

    config = tmp_path / "derived.yaml"
    config.write_text("semantic_ids:\n  sid: {features: [emb]}\ngraphs:\n  g: {features: [emb]}\n")
    nope = str(tmp_path / "mistyped")
    for command in (
        ["prune", nope, "--keep", "2"],
        ["pin", nope, "1"],
        ["unpin", nope, "1"],
        ["semantic-ids", nope, "--config", str(config)],
        ["graph", nope, "--config", str(config)],
    ):
        assert main(command) == 2, command
        assert "no itemlens store at" in capsys.readouterr().err
    assert not (tmp_path / "mistyped").exists()  # nothing made there

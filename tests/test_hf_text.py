"""The ``hf-text`` encoder: a transformers model (decoder LLM or encoder) as a text embedder.

A tiny seeded Qwen3 (extractors/standins/text.py) is loaded through the encoder's real path
(AutoTokenizer + AutoModel). Three tokenizers over the same weights cover the shapes met in
practice:

* ``right``: Qwen3-Embedding-like, EOS added by the tokenizer, pads on the right;
* ``left``: the same, padding on the left (Qwen3-Embedding's own setting);
* ``bos_only``: e5-mistral/Llama-like, BOS in front and no EOS (the encoder appends it for
  last-token pooling) and no pad token (the encoder pads with EOS, so the pad id equals a real
  token's id and only the attention mask tells them apart), padding on the left;
* ``own_end``: Qwen3-Embedding's exact shape: the tokenizer appends an end token that is not
  its EOS (``<|endoftext|>``; its EOS is ``<|im_end|>``), which is pooled as it is.

Every pooling is checked against a direct computation, one text at a time, with the model
and tokenizer loaded independently. The real all-MiniLM-L6-v2 (a BERT encoder) through hf-text
with mean pooling must match sentence-transformers, which pins down the mean pooling.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from itemlens.errors import WeightsNotFoundError
from itemlens.extractors import FeatureSpec, build_encoder
from itemlens.extractors.encoders.hf_text import _length_groups
from itemlens.extractors.standins.text import write_tiny_text_llm

# Very different token counts, so a batch pads most of them.
TEXTS = [
    "red shoes",
    "a waterproof hiking boot with a padded collar, a rubber outsole, a gusseted tongue that keeps "
    "out debris, and a removable insole; sizes from five to fourteen, in brown, black and olive",
    "x",
    "cotton socks, pack of six",
]


def encoder(model, **fields):
    spec = FeatureSpec(encoder="hf-text", model=str(model), input={"template": "{text}"}, **fields)
    return build_encoder(spec).load("cpu")


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> Path:
    return write_tiny_text_llm(tmp_path_factory.mktemp("hf-text") / "tiny-qwen3-seed0", seed=0)


@pytest.fixture(scope="module")
def variants(llm, tmp_path_factory) -> dict[str, Path]:
    """The same weights with the three tokenizer shapes described in the module docstring."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("hf-text-variants")
    out = {"right": llm}
    for name in ("left", "bos_only", "own_end"):
        folder = root / name
        shutil.copytree(llm, folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = "left"
        if name == "own_end":
            tokenizer.eos_token = "[MASK]"  # the tokenizer still appends [SEP]
        if name == "bos_only":
            bos = tokenizer.convert_tokens_to_ids("[CLS]")
            tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
                single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", bos)]
            )
            tokenizer.pad_token = None
        tokenizer.save_pretrained(folder)
        out[name] = folder
    # The variants are what they claim to be once loaded back.
    loaded = {name: AutoTokenizer.from_pretrained(folder) for name, folder in out.items()}
    assert [loaded[n].padding_side for n in ("right", "left", "bos_only")] == ["right", "left", "left"]
    assert loaded["bos_only"].pad_token is None and loaded["right"].pad_token == "[PAD]"
    assert loaded["right"]("red shoes")["input_ids"][-1] == loaded["right"].eos_token_id
    assert loaded["bos_only"]("red shoes")["input_ids"][-1] != loaded["bos_only"].eos_token_id
    own_end = loaded["own_end"]
    assert own_end("red shoes")["input_ids"][-1] == own_end.convert_tokens_to_ids("[SEP]") != own_end.eos_token_id
    return out


@pytest.fixture(scope="module")
def direct_model(llm):
    """The tiny model loaded independently of the encoder (same weights in every variant)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(llm).eval()


def test_loads_base_model_and_tokenizer_through_auto_classes(llm):
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    enc = encoder(llm)
    # Saved as Qwen3ForCausalLM; AutoModel takes the base model without the LM head.
    assert json.loads((llm / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert type(enc.model).__name__ == "Qwen3Model"
    assert isinstance(enc.tokenizer, PreTrainedTokenizerBase)
    assert type(enc.tokenizer).__name__ == type(AutoTokenizer.from_pretrained(llm)).__name__
    assert enc.dim == enc.model.config.hidden_size == 32
    vectors = enc.encode_texts(TEXTS)
    assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
    info = enc.describe()
    assert info["token_pooling"] == "mean" and info["max_seq_length"] == 512 and info["dtype"] == "float32"
    assert sum(f.stat().st_size for f in llm.iterdir()) < 5_000_000


def test_empty_list_gives_zero_rows(llm):
    out = encoder(llm).encode_texts([])
    assert out.shape == (0, 32) and out.dtype == np.float32


@pytest.mark.parametrize("pooling", ["mean", "last_token"])
def test_normalize(llm, pooling):
    unit = encoder(llm, token_pooling=pooling).encode_texts(TEXTS)
    raw = encoder(llm, token_pooling=pooling, normalize=False).encode_texts(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.05), norms
    np.testing.assert_allclose(unit, raw / norms[:, None], atol=1e-5)


@pytest.mark.parametrize("variant", ["right", "left", "bos_only", "own_end"])
@pytest.mark.parametrize("pooling", ["mean", "last_token", "cls"])
def test_pooling_is_batch_invariant_and_matches_direct_computation(variants, direct_model, variant, pooling):
    import torch
    from transformers import AutoTokenizer

    enc = encoder(variants[variant], token_pooling=pooling, normalize=False)
    assert enc.tokenizer.padding_side == ("right" if variant == "right" else "left")
    # Only last-token pooling needs the EOS, and only the bos_only tokenizer ends with no token
    # of its own (own_end's is not its EOS, and is pooled as the model card pools it).
    appends_eos = variant == "bos_only" and pooling == "last_token"
    assert enc.describe()["appends_eos"] == appends_eos

    batch = enc.encode_texts(TEXTS)
    alone = np.stack([enc.encode_texts([text])[0] for text in TEXTS])
    np.testing.assert_allclose(batch, alone, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(variants[variant])
    lengths = []
    for text, vector in zip(TEXTS, batch):
        ids = tokenizer([text])["input_ids"][0] + ([tokenizer.eos_token_id] if appends_eos else [])
        lengths.append(len(ids))
        with torch.inference_mode():
            states = direct_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        expected = {"mean": states.mean(0), "last_token": states[-1], "cls": states[0]}[pooling]
        np.testing.assert_allclose(vector, expected.numpy(), atol=1e-5)
    # The check means something: the batch was padded, and texts give clearly different vectors.
    assert max(lengths) > 5 * min(lengths)
    if pooling == "cls" and variant == "bos_only":
        return  # the first token is BOS for every text, and a decoder's BOS sees nothing after it
    assert min(np.abs(batch[i] - batch[j]).max() for i in range(len(TEXTS)) for j in range(i)) > 0.05


def test_only_features_pooled_on_a_tokenizers_own_end_token_change_fingerprint(variants):
    """The fix for tokenizers like Qwen3-Embedding's re-encodes those features only."""
    from itemlens.extractors.spec import fingerprint

    for variant in ("right", "left", "bos_only", "own_end"):
        for pooling in ("mean", "last_token"):
            enc = build_encoder(
                FeatureSpec(
                    encoder="hf-text", model=str(variants[variant]), input={"template": "{t}"}, token_pooling=pooling
                )
            )
            common = fingerprint(enc.spec, enc.weights_identity(), f"{enc.name}/{enc.processing_version}")
            assert (enc.fingerprint() != common) == (variant == "own_end" and pooling == "last_token")


def test_sub_batches_restore_order(llm):
    whole = encoder(llm, token_pooling="last_token").encode_texts(TEXTS)
    small = encoder(llm, token_pooling="last_token")
    small.tokens_per_batch = 12  # forces several padding groups
    np.testing.assert_allclose(small.encode_texts(TEXTS), whole, atol=1e-5)


def test_length_groups():
    lengths = [3, 40, 1, 7, 7, 2]
    groups = _length_groups(lengths, tokens_per_batch=16)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups[0] == [1]  # longest first, alone even above the budget
    for group in groups:
        assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= 16
        assert [lengths[i] for i in group] == sorted((lengths[i] for i in group), reverse=True)


def test_instruction_is_a_prefix(llm):
    plain = encoder(llm, token_pooling="last_token")
    instructed = encoder(llm, token_pooling="last_token", instruction="Instruct: find the product\nQuery: ")
    a, b = plain.encode_texts(TEXTS), instructed.encode_texts(TEXTS)
    assert np.abs(a - b).max(axis=1).min() > 0.01
    assert plain.fingerprint() != instructed.fingerprint()
    np.testing.assert_allclose(
        b, plain.encode_texts(["Instruct: find the product\nQuery: " + t for t in TEXTS]), atol=1e-6
    )


@pytest.mark.parametrize("variant,pooling", [("right", "mean"), ("bos_only", "last_token")])
def test_max_seq_length_truncates(variants, variant, pooling):
    shared = "alpha beta gamma delta epsilon"
    texts = [shared + " zeta eta theta", shared + " kappa lambda mu nu"]
    cut = encoder(variants[variant], token_pooling=pooling, max_seq_length=6)
    assert cut.describe()["max_seq_length"] == 6
    # 6 tokens: the 5 shared words plus EOS (right: the tokenizer's; bos_only: BOS, 4 words, EOS)
    a, b = cut.encode_texts(texts)
    np.testing.assert_allclose(a, b, atol=1e-6)
    full = encoder(variants[variant], token_pooling=pooling).encode_texts(texts)
    assert np.abs(full[0] - full[1]).max() > 0.01
    assert cut.fingerprint() != encoder(variants[variant], token_pooling=pooling).fingerprint()


def test_deterministic_across_loads_and_writes(llm, tmp_path):
    first = encoder(llm, token_pooling="last_token")
    second = encoder(llm, token_pooling="last_token")
    np.testing.assert_array_equal(first.encode_texts(TEXTS), second.encode_texts(TEXTS))
    assert first.fingerprint() == second.fingerprint()
    again = write_tiny_text_llm(tmp_path / "again", seed=0)
    np.testing.assert_array_equal(
        encoder(again, token_pooling="last_token").encode_texts(TEXTS), first.encode_texts(TEXTS)
    )
    other = write_tiny_text_llm(tmp_path / "other", seed=1)
    assert (
        np.abs(encoder(other, token_pooling="last_token").encode_texts(TEXTS) - first.encode_texts(TEXTS)).max() > 0.05
    )
    # An existing complete folder is kept, not rewritten.
    mtime = (again / "model.safetensors").stat().st_mtime_ns
    assert write_tiny_text_llm(again, seed=5) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime


def test_missing_weights(llm, tmp_path):
    spec = dict(encoder="hf-text", input={"template": "{text}"})
    missing = build_encoder(FeatureSpec(model=str(tmp_path / "nowhere"), **spec))
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        missing.check_weights()
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        missing.load("cpu")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(llm / "config.json", config_only)
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        build_encoder(FeatureSpec(model=str(config_only), **spec)).check_weights()
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        build_encoder(FeatureSpec(model="nobody/no-such-embedder", **spec)).check_weights()


def test_checkpoint_missing_layers_is_refused(llm, tmp_path):
    # A config asking for a layer the checkpoint lacks: transformers would initialize it at random.
    folder = tmp_path / "three-layers"
    shutil.copytree(llm, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    config.pop("layer_types", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsNotFoundError, match="random weights"):
        encoder(folder)


@pytest.mark.parametrize(
    "field,value",
    [
        ("prompt", "describe"),
        ("checkpoint", "w.safetensors"),
        ("pretrained", "laion"),
        ("max_new_tokens", 8),
        ("window_seconds", 5.0),
    ],
)
def test_rejects_fields_it_does_not_use(llm, field, value):
    with pytest.raises(ValidationError, match=field):  # not an option of the hf-text spec
        FeatureSpec(encoder="hf-text", model=str(llm), input={"template": "{text}"}, **{field: value})


def test_minilm_mean_pooling_matches_sentence_transformers(minilm_path):
    texts = TEXTS + ["Wireless noise-cancelling headphones with 30 hours of battery"]
    hf = encoder(minilm_path, token_pooling="mean")
    assert type(hf.model).__name__ == "BertModel"
    st = build_encoder(
        FeatureSpec(encoder="sentence-transformers", model=minilm_path, input={"template": "{text}"})
    ).load("cpu")
    a, b = hf.encode_texts(texts).astype(np.float64), st.encode_texts(texts).astype(np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9999, cosine
    # and CLS pooling is a different vector (so the agreement above is about the pooling)
    cls = encoder(minilm_path, token_pooling="cls").encode_texts(texts).astype(np.float64)
    assert ((cls * b).sum(1)).max() < 0.99


def test_left_padding_with_absolute_positions(variants, tmp_path):
    """A model with learned absolute positions (GPT-2) and a left-padding tokenizer: the real
    tokens must get positions 0..n-1 as alone, not shifted by the padding (RoPE models, like the
    tiny Qwen3, would hide a shift)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    tokenizer = AutoTokenizer.from_pretrained(variants["left"])
    torch.manual_seed(0)
    model = GPT2Model(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=128,
            initializer_range=0.5,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    for pooling in ("mean", "last_token"):
        enc = encoder(tmp_path / "gpt2", token_pooling=pooling)
        assert type(enc.model).__name__ == "GPT2Model" and enc.tokenizer.padding_side == "left"
        alone = np.stack([enc.encode_texts([text])[0] for text in TEXTS])
        np.testing.assert_allclose(enc.encode_texts(TEXTS), alone, atol=1e-5)


@pytest.mark.gpu
def test_bf16_on_cuda_matches_fp32_on_cpu(minilm_path):
    texts = TEXTS
    gpu = build_encoder(FeatureSpec(encoder="hf-text", model=minilm_path, input={"template": "{text}"})).load("cuda")
    assert gpu.describe()["dtype"] in {"bfloat16", "float16"}  # precision auto: half weights on GPU
    a = gpu.encode_texts(texts).astype(np.float64)
    b = encoder(minilm_path).encode_texts(texts).astype(np.float64)
    assert a.shape == b.shape and np.isfinite(a).all()
    assert ((a * b).sum(1)).min() >= 0.99  # both normalized


def test_text_without_tokens_is_an_input_error(llm, tmp_path):
    from transformers import AutoTokenizer

    from itemlens.extractors import ItemError

    # A tokenizer that adds no special tokens turns "" into no tokens at all.
    folder = tmp_path / "no-specials"
    shutil.copytree(llm, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.post_processor = None
    tokenizer.save_pretrained(folder)
    enc = encoder(folder)
    assert enc.encode_texts(["red shoes"]).shape == (1, 32)
    with pytest.raises(ItemError) as caught:
        enc.encode_texts(["red shoes", ""])
    assert caught.value.stage == "input"

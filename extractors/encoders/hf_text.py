"""``hf-text``: a transformers text model as a text embedder.

For models that ship no sentence-transformers configuration, or whose recipe is simple enough
to state in the spec: decoder LLM embedders (Qwen3-Embedding, e5-mistral, gte-Qwen2: last-token
pooling plus an instruction prefix) and encoder models (BERT-style: mean or CLS pooling).

Loading: ``AutoTokenizer`` and ``AutoModel`` (the base model, no LM head; a checkpoint saved
with its head, e.g. ``*ForCausalLM``, loads its base weights) from a local folder or a hub id at
``revision``, with ``trust_remote_code`` as the spec says and ``local_files_only`` when the hub
is offline. Weights come from safetensors when the model has them, else from ``.bin`` files,
which transformers reads with ``torch.load(weights_only=True)``. A checkpoint that leaves weights
of the model uninitialized is an error, not a model with random layers. The weights are loaded
in the dtype the run uses: on GPU bf16 (fp16 where bf16 is unsupported) for ``precision: auto``,
on CPU fp32; an explicit ``precision`` is honoured. Pooling and normalization run in fp32.

Encoding a batch of texts:

1. ``instruction`` (if any) is prepended to every text;
2. each text is tokenized with the tokenizer's own special tokens and truncated to
   ``max_seq_length`` tokens (default: the tokenizer's ``model_max_length``, capped at 512);
3. with ``token_pooling: last_token`` every sequence ends with the EOS token: tokenizers of
   last-token embedders either add it themselves (Qwen3-Embedding, gte-Qwen2) or the model card
   appends it by hand (e5-mistral); so when the tokenizer does not put EOS last, it is appended
   (after truncating to ``max_seq_length - 1``), and the state of EOS, which has seen the
   whole text, is the embedding;
4. texts are sorted by token count and grouped into sub-batches of at most
   :attr:`HFTextEncoder.tokens_per_batch` padded tokens, so short texts are not padded to the
   length of long ones; the results go back in the caller's order;
5. pooling over the last hidden state uses the attention mask, so it is right whichever side
   the tokenizer pads: ``mean`` averages the real tokens (special tokens included, as
   sentence-transformers does), ``last_token`` takes each row's last real token, ``cls`` its
   first. A tokenizer without a pad token pads with EOS (the usual choice for LLM tokenizers;
   the mask, not the token id, tells padding apart). With left padding the real tokens get
   the positions 0..n-1 they would have alone (as ``generate`` does), so a text's vector does
   not depend on its batch-mates.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from itemlens.errors import ConfigError, WeightsNotFoundError
from itemlens.extractors.base import Encoder, ItemError
from itemlens.extractors.spec import HubModelSpec, fingerprint
from itemlens.extractors.weights import ModelFiles

_CONFIG_FILES = ["config.json"]
# What AutoModel reads weights from, preferred first.
_WEIGHT_FILES = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
]
# Default truncation when the spec gives none: most tokenizers say 512 or more (or a huge
# "no limit" sentinel), and longer sequences cost quadratic attention for little gain on
# catalog text.
_DEFAULT_MAX_TOKENS = 512


class HFTextSpec(HubModelSpec):
    """``hf-text``: a transformers text model (an encoder or an LLM) as an embedder."""

    encoder: Literal["hf-text"]
    max_seq_length: int | None = Field(None, ge=1, description="truncation, in tokens (default: the model's)")
    token_pooling: Literal["mean", "last_token", "cls"] | None = Field(
        None, description="how token states become one vector (default mean; last_token for LLM embedders)"
    )
    instruction: str | None = Field(
        None, description="prefixed to every text (instruction-tuned embedders, e.g. 'query: ')"
    )


class HFTextEncoder(Encoder):
    name = "hf-text"
    spec_model = HFTextSpec
    input_kinds = frozenset({"text"})

    #: padded tokens (rows x longest row) per forward pass; bounds activation memory
    tokens_per_batch: ClassVar[int] = 16384

    @property
    def token_pooling(self) -> str:
        return self.spec.token_pooling or "mean"

    # -- identity ---------------------------------------------------------------------
    @functools.cached_property
    def files(self) -> ModelFiles:
        return ModelFiles(self.spec, "hf-text model")

    def weights_identity(self) -> str:
        return self.files.identity()

    def check_weights(self) -> None:
        self.files.require(_CONFIG_FILES, _WEIGHT_FILES)

    @functools.cached_property
    def _fingerprint(self) -> str:
        """The common fingerprint; a last-token feature whose tokenizer ends a sequence with a
        token of its own other than its EOS (Qwen3-Embedding: ``<|endoftext|>``, EOS
        ``<|im_end|>``) also has that in its recipe: such features were once pooled on an EOS
        appended after it, so their stored vectors are encoded again. Every other feature keeps
        its fingerprint (the tokenizer is only read for last-token pooling)."""
        processing = f"{self.name}/{self.processing_version}"
        if self.token_pooling == "last_token":
            end = _appended_token(self.tokenizer)
            if end not in (None, self.tokenizer.eos_token_id):
                processing += "/own-end-token"
        return fingerprint(self.spec, self.weights_identity(), processing)

    @functools.cached_property
    def tokenizer(self):
        """The model's own tokenizer (no weights), read once for the fingerprint and the load."""
        from transformers import AutoTokenizer

        self.check_weights()
        try:
            return AutoTokenizer.from_pretrained(self.files.source, **self.files.options())
        except OSError as exc:
            raise self.files.load_error(exc, _CONFIG_FILES) from exc

    # -- model ------------------------------------------------------------------------
    def _load(self, device: str) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per actor per load is noise in a pipeline
        self.check_weights()
        source, options = self.files.source, self.files.options()
        dtype = _model_dtype(device, self.spec.precision)
        tokenizer = self.tokenizer
        try:
            model, info = AutoModel.from_pretrained(source, dtype=dtype, output_loading_info=True, **options)
        except OSError as exc:
            raise self.files.load_error(exc, _CONFIG_FILES + _WEIGHT_FILES) from exc
        missing = list(info.get("missing_keys") or [])
        if missing:
            # transformers would have initialized these at random: refuse, as for missing weights.
            shown = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
            raise WeightsNotFoundError(
                f"{source}: the checkpoint has no weights for {len(missing)} parameters of "
                f"{type(model).__name__} ({shown}); itemlens never encodes with random weights"
            )

        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(f"the tokenizer of {source} has neither a pad token nor an EOS token to pad with")
            tokenizer.pad_token = tokenizer.eos_token  # padding is told apart by the attention mask

        max_tokens = self.spec.max_seq_length
        if max_tokens is None:
            max_tokens = min(int(tokenizer.model_max_length or _DEFAULT_MAX_TOKENS), _DEFAULT_MAX_TOKENS)
        self.max_seq_length = max_tokens
        self.append_eos = self.token_pooling == "last_token" and _needs_eos(tokenizer)
        if self.append_eos and max_tokens < 2:
            raise ConfigError("hf-text: last_token pooling with an appended EOS needs max_seq_length >= 2")

        accepted = set(inspect.signature(model.forward).parameters)
        # Only inputs the model names: an LLM's forward takes **kwargs and would swallow
        # token_type_ids (which some tokenizers return) without a word.
        self._inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in accepted else [])
        self._pass_positions = "position_ids" in accepted
        self.model = model.to(device).eval()
        self._dtype = dtype

    @property
    def dim(self) -> int:
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text_config.hidden_size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()
        texts = [(self.spec.instruction or "") + text for text in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        features = self._tokenize(texts)
        lengths = [len(ids) for ids in features["input_ids"]]
        for text, n in zip(texts, lengths):
            if n == 0:
                raise ItemError("input", f"the text has no tokens: {text[:80]!r}")
        out = np.zeros((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for group in _length_groups(lengths, self.tokens_per_batch):
                rows = [{key: values[i] for key, values in features.items()} for i in group]
                out[group] = self._encode_padded(self.tokenizer.pad(rows, padding=True, return_tensors="pt"))
        return out

    def _tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids per text, unpadded, truncated; EOS appended where :attr:`append_eos`."""
        limit = self.max_seq_length - 1 if self.append_eos else self.max_seq_length
        encoded = self.tokenizer(texts, truncation=True, max_length=limit, padding=False)
        features = {key: [list(v) for v in encoded[key]] for key in self._inputs if key in encoded}
        if self.append_eos:
            eos = self.tokenizer.eos_token_id
            for i, ids in enumerate(features["input_ids"]):
                ids.append(eos)
                features["attention_mask"][i].append(1)
                if "token_type_ids" in features:
                    types = features["token_type_ids"][i]
                    types.append(types[-1] if types else 0)
        return features

    def _encode_padded(self, batch) -> np.ndarray:
        import torch

        batch = {key: value.to(self.device) for key, value in batch.items()}
        mask = batch["attention_mask"].bool()
        if self._pass_positions and self.tokenizer.padding_side == "left":
            # Left padding shifts the real tokens' default positions by the pad count; give
            # them 0..n-1 as alone (only here: right padding leaves them right already, and
            # some models, e.g. RoBERTa, count positions from an offset of their own).
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        states = self.model(**batch).last_hidden_state.float()
        states = states.masked_fill(~mask.unsqueeze(-1), 0.0)  # padded rows may hold NaN or junk
        positions = torch.arange(mask.shape[1], device=mask.device)
        if self.token_pooling == "mean":
            pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        else:
            if self.token_pooling == "last_token":  # each row's last real token, whichever side is padded
                index = torch.where(mask, positions, -1).max(1).values
            else:  # cls: each row's first real token
                index = torch.where(mask, positions, mask.shape[1]).min(1).values
            pooled = states[torch.arange(states.shape[0], device=states.device), index]
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["token_pooling"] = self.token_pooling
        if hasattr(self, "model"):
            info.update(
                model_class=type(self.model).__name__,
                dim=self.dim,
                max_seq_length=self.max_seq_length,
                padding_side=self.tokenizer.padding_side,
                appends_eos=self.append_eos,
                dtype=str(self._dtype).removeprefix("torch."),
            )
        return info


def _model_dtype(device: str, precision: str):
    """The dtype the weights are loaded in (the whole model runs in it, not autocast: an LLM
    in fp32 would need twice the GPU memory)."""
    import torch

    if precision == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _needs_eos(tokenizer) -> bool:
    """True when the tokenizer ends a sequence with no end token of its own (Llama's, which
    e5-mistral's recipe follows with an appended EOS). One that appends its EOS, or another
    token (Qwen3-Embedding's ``<|endoftext|>``, whose EOS is ``<|im_end|>``), is followed as it
    is, as the model cards and sentence-transformers do."""
    return tokenizer.eos_token_id is not None and _appended_token(tokenizer) is None


def _appended_token(tokenizer) -> int | None:
    """The token the tokenizer's template puts after the text, or None."""
    probe = tokenizer("a", truncation=False)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return probe[-1] if probe and probe[-1:] != plain[-1:] else None


def _length_groups(lengths: list[int], tokens_per_batch: int) -> list[list[int]]:
    """Indices grouped for padding: longest first (an out-of-memory shows on the first
    group), each group at most ``tokens_per_batch`` padded tokens (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= tokens_per_batch:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups

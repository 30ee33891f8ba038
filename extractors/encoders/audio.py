"""``audio``: a transformers audio model (hub id with an optional revision, or local folder).

Two families, told apart by the model's ``config.json`` (``model_type``):

* **CLAP** (``clap``): ``ClapModel.get_audio_features`` on the ``ClapFeatureExtractor``'s log-mel
  input, 48 kHz, one vector per window of at most the extractor's ``max_length_s`` (10 s).
  Shorter windows are filled the extractor's way (``padding``: ``repeatpad`` repeats the clip).
  The output is CLAP's projected embedding (``projection_dim``), which CLAP itself
  L2-normalizes; it lives in the space of CLAP's text tower.
* **speech encoders that take the raw waveform** (wav2vec2, wav2vec2-conformer, HuBERT, WavLM,
  data2vec-audio): ``AutoFeatureExtractor`` + ``AutoModel``, and the mean of
  ``last_hidden_state`` over the frames that hold real audio (``hidden_size``); 16 kHz as the
  extractor says, 30 s windows by default.

A clip's vector never depends on the other clips in its batch. CLAP pads every window to its
fixed length on its own, and the extractor's random choice of a "longer" clip for fusion
models (``truncation: fusion`` with no clip over 10 s marks a random one) is overridden: no
window here is longer than ``max_length_s``, so none is marked. wav2vec2, HuBERT and WavLM
models whose feature extractor returns an attention mask and whose conv stack uses layer norm
(wav2vec2-large-lv60, WavLM-large, ...) encode padded batches with that mask and pool the
frames ``_get_feat_extract_output_lengths`` says are real. The others would see the padding
(group norm over time in wav2vec2-base and HuBERT-base, whose model cards say "pad with zeros
and pass no mask"; padding carried through data2vec-audio's positional convs and the
conformer's convolutions), so they are only ever batched with clips of exactly the same
length: no padding at all.

Vectors are float32 and not normalized: the caller pools an item's windows
(:func:`itemlens.extractors.audio.pool_windows`), then normalizes per ``spec.normalize``
(:meth:`AudioEncoder.pool_item` does both for one item).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from itemlens.errors import ConfigError, WeightsNotFoundError
from itemlens.extractors.base import AudioFormat, Encoder, autocast
from itemlens.extractors.spec import HubModelSpec
from itemlens.extractors.weights import ModelFiles, hub_offline, missing_hub_weights

_CONFIG = "config.json"
_PREPROCESSOR = "preprocessor_config.json"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

_CLAP_TYPES = frozenset({"clap"})
#: model types whose AutoModel takes ``input_values`` (the waveform) and
#: ``attention_mask``, returns ``last_hidden_state`` and knows ``_get_feat_extract_output_lengths``
_WAVEFORM_TYPES = frozenset({"wav2vec2", "wav2vec2-conformer", "hubert", "wavlm", "data2vec-audio"})
#: those among them whose encoder zeroes padded frames and lets nothing reach real frames from
#: them but one positional conv over the zeros: with a layer-norm conv stack and the mask,
#: padding changes no clip's output (checked to 1e-6). data2vec-audio's five positional conv
#: layers and the conformer's depthwise convs carry padding into real frames.
_PADDING_SAFE_TYPES = frozenset({"wav2vec2", "hubert", "wavlm"})
#: default window of the speech encoders (their training clips are far shorter; 30 s keeps
#: attention cost moderate and a typical product clip in one window)
_DEFAULT_WINDOW_SECONDS = 30.0


class AudioSpec(HubModelSpec):
    """``audio``: CLAP's audio tower, or a wav2vec2/HuBERT/WavLM-style model with mean pooling."""

    encoder: Literal["audio"]
    window_seconds: float | None = Field(
        None,
        gt=0,
        description="window length; longer clips are cut into windows and pooled (default: the "
        "model's own, 10 s for CLAP, 30 s otherwise)",
    )


class AudioEncoder(Encoder):
    name = "audio"
    spec_model = AudioSpec
    input_kinds = frozenset({"audio"})

    # -- where the model is -------------------------------------------------------------
    @functools.cached_property
    def files(self) -> ModelFiles:
        return ModelFiles(self.spec, "audio model")

    def _json(self, name: str) -> dict[str, Any]:
        """A config file of the model: from its folder, or the hub (cache only when offline)."""
        folder = self.files.folder()
        if folder is not None:
            path = folder / name
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"{folder.resolve()} is not a transformers audio model folder: it has no {name}"
                )
        else:
            from huggingface_hub import hf_hub_download

            try:
                path = Path(
                    hf_hub_download(self.spec.model, name, revision=self.spec.revision, local_files_only=hub_offline())
                )
            except Exception as exc:  # offline cache miss, network error, no such repo or file
                raise missing_hub_weights(
                    f"audio model {self.spec.model!r}", self.spec.model, [name], self.spec.revision
                ) from exc
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc

    @functools.cached_property
    def _model_type(self) -> str:
        model_type = self._json(_CONFIG).get("model_type")
        if model_type not in _CLAP_TYPES | _WAVEFORM_TYPES:
            raise ConfigError(
                f"encoder 'audio' does not support model type {model_type!r} ({self.spec.model}); it takes CLAP "
                f"(clap) and waveform speech encoders ({', '.join(sorted(_WAVEFORM_TYPES))})"
            )
        return model_type

    @property
    def is_clap(self) -> bool:
        return self._model_type in _CLAP_TYPES

    # -- identity (driver side) ---------------------------------------------------------
    def weights_identity(self) -> str:
        return self.files.identity()

    def check_weights(self) -> None:
        self.files.require(
            [_CONFIG],
            [_PREPROCESSOR],
            _WEIGHTS,
            hub_groups=[[_CONFIG], [_PREPROCESSOR]],
            kind="transformers audio model",
        )
        self.audio_format()  # the model type and window are checked too, before any work

    # -- CPU side -----------------------------------------------------------------------
    def audio_format(self) -> AudioFormat:
        return self._audio_format

    @functools.cached_property
    def _audio_format(self) -> AudioFormat:
        """From config.json and preprocessor_config.json only; no weights are loaded."""
        model_type = self._model_type
        pre = self._json(_PREPROCESSOR)
        rate = pre.get("sampling_rate")
        if not isinstance(rate, int) or rate <= 0:
            raise ConfigError(f"{self.spec.model}: {_PREPROCESSOR} has no usable sampling_rate ({rate!r})")
        window = self.spec.window_seconds
        if model_type in _CLAP_TYPES:
            longest = pre.get("nb_max_samples", rate * pre.get("max_length_s", 10)) / rate
            if window is not None and round(window * rate) > round(longest * rate):
                raise ConfigError(
                    f"window_seconds {window} is longer than CLAP's {longest:g} s input ({self.spec.model}); "
                    "its feature extractor would crop a random part of each window"
                )
            window = window or longest
        return AudioFormat(sample_rate=rate, channels=1, window_seconds=window or _DEFAULT_WINDOW_SECONDS)

    # -- model --------------------------------------------------------------------------
    def _load(self, device: str) -> None:
        from transformers import AutoFeatureExtractor, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per actor per load is noise in a pipeline
        self.check_weights()
        source, options = self.files.source, self.files.options()
        try:
            extractor = AutoFeatureExtractor.from_pretrained(source, **options)
            model = AutoModel.from_pretrained(source, **options)
        except OSError as exc:
            raise self.files.load_error(exc, [_CONFIG, *_WEIGHTS]) from exc
        needed = "get_audio_features" if self.is_clap else "_get_feat_extract_output_lengths"
        if not hasattr(model, needed):
            raise ConfigError(f"{self.spec.model}: {type(model).__name__} has no {needed}; not a supported audio model")
        if extractor.sampling_rate != self.audio_format().sample_rate:
            raise ConfigError(
                f"{self.spec.model}: feature extractor rate {extractor.sampling_rate} Hz differs "
                f"from {_PREPROCESSOR}'s {self.audio_format().sample_rate} Hz"
            )
        self.extractor = extractor
        self.model = model.to(device).eval()
        # Padded batches are safe only with an attention mask that the whole model honours;
        # group norm in the conv stack normalizes over time, padding included.
        self.masked = (
            self._model_type in _PADDING_SAFE_TYPES
            and bool(getattr(extractor, "return_attention_mask", False))
            and getattr(model.config, "feat_extract_norm", "layer") != "group"
        )
        if not self.is_clap:
            self.min_samples = self._shortest_input()

    def _shortest_input(self) -> int:
        """Fewest samples that give the conv stack one frame (400, 25 ms, for wav2vec2):
        shorter clips are padded with silence up to it."""
        import torch

        candidates = torch.arange(1, 1 << 16)
        enough = candidates[self.model._get_feat_extract_output_lengths(candidates) >= 1]
        if len(enough) == 0:
            raise ConfigError(f"{self.spec.model}: no input under 65,536 samples gives its conv stack a frame")
        return int(enough[0])

    @property
    def dim(self) -> int:
        config = self.model.config
        return int(config.projection_dim if self.is_clap else config.hidden_size)

    def encode_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        self.load()
        fmt = self.audio_format()
        waves = []
        for clip in clips:
            clip = np.asarray(clip, dtype=np.float32)
            if clip.ndim != 2 or clip.shape[0] != fmt.channels:
                raise ValueError(f"audio clips must be float32 [{fmt.channels}, samples]; got shape {clip.shape}")
            if not 0 < clip.shape[1] <= fmt.window_samples:
                raise ValueError(
                    f"audio clips must hold 1 to {fmt.window_samples} samples (one window; cut longer "
                    f"ones with audio_windows); got {clip.shape[1]}"
                )
            waves.append(clip[0])
        if not waves:
            return np.zeros((0, self.dim), np.float32)
        return self._encode_clap(waves) if self.is_clap else self._encode_waveforms(waves)

    def _encode_clap(self, waves: list[np.ndarray]) -> np.ndarray:
        import torch

        inputs = self.extractor(waves, sampling_rate=self.extractor.sampling_rate, return_tensors="pt")
        features = inputs["input_features"].to(self.device, torch.float32)
        is_longer = torch.zeros((len(waves), 1), dtype=torch.bool, device=self.device)  # see the module docstring
        with torch.inference_mode(), autocast(self.device, self.spec.precision):
            out = self.model.get_audio_features(input_features=features, is_longer=is_longer)
        return out.pooler_output.float().cpu().numpy()

    def _encode_waveforms(self, waves: list[np.ndarray]) -> np.ndarray:
        waves = [np.pad(w, (0, self.min_samples - len(w))) if len(w) < self.min_samples else w for w in waves]
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        if self.masked:
            batches = [order]
        else:  # equal lengths only: no padding at all
            batches, last = [], None
            for i in order:
                if len(waves[i]) != last:
                    batches.append([])
                    last = len(waves[i])
                batches[-1].append(i)
        out = np.empty((len(waves), self.dim), np.float32)
        for batch in batches:
            out[batch] = self._mean_states([waves[i] for i in batch])
        return out

    def _mean_states(self, waves: list[np.ndarray]) -> np.ndarray:
        """Mean of last_hidden_state over each clip's real frames."""
        import torch

        inputs = self.extractor(
            waves,
            sampling_rate=self.extractor.sampling_rate,
            return_tensors="pt",
            padding=True,
            return_attention_mask=self.masked,
        )
        values = inputs["input_values"].to(self.device, torch.float32)
        mask = inputs["attention_mask"].to(self.device) if self.masked else None
        with torch.inference_mode(), autocast(self.device, self.spec.precision):
            states = self.model(input_values=values, attention_mask=mask).last_hidden_state.float()
            frames = self.model._get_feat_extract_output_lengths(
                torch.tensor([len(w) for w in waves], device=self.device)
            ).clamp(min=1, max=states.shape[1])
            real = (torch.arange(states.shape[1], device=self.device)[None, :] < frames[:, None]).float()
            pooled = (states * real[..., None]).sum(dim=1) / frames[:, None].float()
        return pooled.cpu().numpy()

    def pool_item(self, vectors: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
        """One item's vector from its windows' vectors: pooled by window length
        (:func:`~itemlens.extractors.audio.pool_windows`), then L2-normalized if the spec
        says so."""
        from itemlens.extractors.audio import pool_windows

        vector = pool_windows(vectors, lengths)
        if self.spec.normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return vector.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        fmt = self.audio_format()
        info.update(model_type=self._model_type, sample_rate=fmt.sample_rate, window_seconds=fmt.window_seconds)
        if hasattr(self, "model"):
            info.update(dim=self.dim)
        return info

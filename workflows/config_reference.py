"""The reference pages that are rendered from the code, so that they cannot drift from it.

* ``docs/configuration.md``, whole: every section and field of the YAML configuration with its
  type, default and description, read from the pydantic models (:class:`IngestConfig` and its
  sections, :class:`FeatureSpec` with its inputs, resources and index, each registered encoder's
  own options model, :class:`SemanticIdSpec`, :class:`GraphSpec` and what they nest). The
  models' ``Field(description=...)`` are the one source: a field without one is listed by
  :func:`undocumented` (tests/test_docs.py fails on it).
* ``docs/cli.md``, its generated block: every command and option of :func:`build_parser`.
* ``docs/graphs.md``, its generated block: the graph presets' registry.

::

    python -m itemlens.workflows.config_reference            # rewrite the three files
    python -m itemlens.workflows.config_reference --check    # exit 1, naming each file that is stale

Registries are read as they are in the running process, so render in a fresh process (as the
command line does): a plug-in that a program registered would otherwise appear in the pages.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from itemlens.config_types import NAME
from itemlens.extractors import spec as feature_spec
from itemlens.extractors.registry import encoder_class, encoder_names, spec_model
from itemlens.store.graphs import GraphSpec, InteractionsSpec
from itemlens.store.graphs.presets import get_preset, preset_names
from itemlens.store.semantic_ids import SemanticIdSpec, VaeParams
from itemlens.store.semantic_ids.quantizers import quantizer_names
from itemlens.workflows.config import CatalogConfig, DecodeConfig, DerivedConfig, IngestConfig, StagingConfig

#: the repository root (docs/ lives there)
ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python -m itemlens.workflows.config_reference"


# -- the models, in the order the page shows them ---------------------------------------------

#: (heading, YAML path shown under it, model, one line about it); encoders' own options follow
#: ``features`` and are found through the registry
SECTIONS: list[tuple[str, str, type[BaseModel] | None, str]] = [
    ("Top level", "", IngestConfig, "The file's sections. Only `features:` is required for `itemlens ingest`."),
    ("catalog", "catalog:", CatalogConfig, "How the catalog is read."),
    (
        "decode",
        "decode:",
        DecodeConfig,
        "The CPU stage that reads, hashes, decodes and preprocesses inputs, and the bounds it keeps to.",
    ),
    (
        "staging",
        "staging:",
        StagingConfig,
        "How often encoded rows are committed to the staging table while a job runs: what a killed job keeps.",
    ),
    (
        "features",
        "features: {NAME: ...}",
        feature_spec.FeatureSpec,
        (
            "One entry per feature, keyed by its name. These fields are common to every encoder; each encoder "
            "adds its own options ([Encoder options](#encoder-options))."
        ),
    ),
    (
        "input",
        "features.NAME.input",
        None,
        "What a feature reads: one of the five forms below, told apart by their key.",
    ),
    (
        "resources",
        "features.NAME.resources",
        feature_spec.Resources,
        (
            "The Ray resources of the feature's encoder actors. GPU counts are requests: on a cluster without GPUs "
            "the job says so and runs on CPU."
        ),
    ),
    (
        "index",
        "features.NAME.index",
        feature_spec.IndexSpec,
        (
            "A vector index the ingest builds once the feature holds `min_rows` vectors, and keeps current after that "
            "(`itemlens index` and `lens.create_index` build one on demand)."
        ),
    ),
    (
        "semantic_ids",
        "semantic_ids: {NAME: ...}",
        SemanticIdSpec,
        "Semantic IDs derived from stored vectors ([semantic-ids.md](semantic-ids.md)).",
    ),
    ("vae", "semantic_ids.NAME.vae", VaeParams, "RQ-VAE's training (`method: rq-vae` only)."),
    (
        "graphs",
        "graphs: {NAME: ...}",
        GraphSpec,
        "Item-item kNN graphs derived from stored vectors ([graphs.md](graphs.md)).",
    ),
    (
        "interactions",
        "graphs.NAME.interactions",
        InteractionsSpec,
        "An item co-occurrence input built from interactions (MMHCL, REARM).",
    ),
]

#: the forms of ``input`` (FeatureSpec.input is a union of them, told apart by the key they have)
INPUT_FORMS: list[tuple[str, type[BaseModel], str]] = [
    (
        "text from columns",
        feature_spec.TextInput,
        (
            'A text rendered from catalog columns, e.g. `{template: "{title}. {description}"}`; a list column is '
            "joined with `; `."
        ),
    ),
    (
        "images",
        feature_spec.ImageInput,
        "An image column: each cell a path or URI, or a list of them (pooled per `pooling`).",
    ),
    (
        "video",
        feature_spec.VideoInput,
        (
            "A video column. Frames are sampled and decoded on CPU with PyAV: by default the middle frame of each of "
            "`frames` equal segments; with `every_seconds: s` the frame on screen at 0, s, 2s ... (by the container's "
            "timestamps), at most `frames` of them."
        ),
    ),
    (
        "audio",
        feature_spec.AudioInput,
        "An audio column: each cell an audio file, or a video file whose audio track is used.",
    ),
    (
        "another feature's captions",
        feature_spec.FeatureRefInput,
        "The captions a caption feature writes in the same run: `{feature: caption}`, or just `input: caption`.",
    ),
]


def encoder_models() -> list[tuple[str, type[feature_spec.FeatureSpec]]]:
    """Each registered encoder and its options model (its ``spec_model``)."""
    return [(name, spec_model(name)) for name in encoder_names()]


def documented_models() -> list[type[BaseModel]]:
    """Every model whose fields the configuration page lists."""
    models = [model for _, _, model, _ in SECTIONS if model is not None]
    models += [model for _, model, _ in INPUT_FORMS]
    models += [model for _, model in encoder_models()]
    return models


def own_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields a model's table lists. An encoder's options model lists what it adds to (or
    changes in) FeatureSpec; its ``encoder`` field only narrows the name to its own (the
    section's heading says it), so it is documented once, in FeatureSpec's table."""
    fields = dict(model.model_fields)
    if issubclass(model, feature_spec.FeatureSpec) and model is not feature_spec.FeatureSpec:
        common = feature_spec.FeatureSpec.model_fields
        fields = {
            name: info
            for name, info in fields.items()
            if name != "encoder" and (name not in common or _field_signature(info) != _field_signature(common[name]))
        }
    return fields


def _field_signature(info: FieldInfo) -> tuple:
    return (repr(info.annotation), repr(_default(info)), info.description, repr(info.metadata))


def undocumented() -> list[str]:
    """``Model.field (module)`` for every listed field without a description."""
    missing = []
    for model in documented_models():
        for name, info in own_fields(model).items():
            if not (info.description or "").strip():
                missing.append(f"{model.__name__}.{name} ({model.__module__})")
    return missing


def unlisted_models() -> list[str]:
    """Models nested in the configuration that no section lists (a new nested model needs one)."""
    listed = set(documented_models())
    seen: set[type[BaseModel]] = set()
    missing: list[str] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        if model not in listed and model is not DerivedConfig:
            missing.append(f"{model.__name__} ({model.__module__})")
        for info in model.model_fields.values():
            for nested in _models_in(info.annotation):
                visit(nested)

    for model in [IngestConfig, DerivedConfig, *(m for _, m in encoder_models())]:
        visit(model)
    return missing


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


# -- rendering one field ------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped (but - and _),
    spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _model_link(model: type[BaseModel]) -> str:
    for heading, _, listed, _ in SECTIONS:
        if listed is model:
            return f"[{heading}](#{github_anchor(heading)})"
    for label, form, _ in INPUT_FORMS:
        if form is model:
            return f"[{label}](#{github_anchor(_input_heading(label, form))})"
    return model.__name__


def _type(annotation: Any) -> str:
    """A field's type as a reader of YAML knows it."""
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_link(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a) if not isinstance(a, str) else a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        text = " or ".join(_type(a) for a in parts)
        return text + (" or null" if len(parts) < len(args) else "")
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if origin is not None:
        return str(annotation)
    return {str: "string", int: "integer", float: "number", bool: "boolean", Any: "any"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


_BOUNDS = (
    (annotated_types.Ge, "ge", "at least"),
    (annotated_types.Gt, "gt", "more than"),
    (annotated_types.Le, "le", "at most"),
    (annotated_types.Lt, "lt", "less than"),
    (annotated_types.MinLen, "min_length", "entries: at least"),
    (annotated_types.MaxLen, "max_length", "entries: at most"),
)


def _bounds(info: FieldInfo) -> str:
    out = []
    for item in info.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                out.append(f"{sign} {_number(getattr(item, attribute))}")
    return ", ".join(out)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1e6 else f"{value:g}"
    return str(value)


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()
    return info.default


def _default_text(info: FieldInfo) -> str:
    value = _default(info)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "its defaults"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"`{_number(value)}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, and ``<`` outside code spans (a
    ``DIR/<feature>.log`` would otherwise read as an HTML tag and vanish)."""
    parts = text.replace("\n", " ").split("`")
    parts = [p if i % 2 else re.sub(r"<(?=[A-Za-z/!])", "&lt;", p) for i, p in enumerate(parts)]
    return "`".join(parts).replace("|", "\\|")


def _table(model: type[BaseModel], execution: frozenset[str] = frozenset()) -> list[str]:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, info in own_fields(model).items():
        kind = _type(info.annotation)
        bounds = _bounds(info)
        description = (info.description or "").strip() or "**undocumented**"
        if name in execution and "fingerprint" not in description:
            description += " (an execution setting: not part of the fingerprint)"
        lines.append(
            f"| `{name}` | {_cell(kind + (f', {bounds}' if bounds else ''))} | {_cell(_default_text(info))} "
            f"| {_cell(description)} |"
        )
    return lines


def _docline(thing: Any) -> str:
    """The first paragraph of a docstring, its reStructuredText literals and roles as Markdown."""
    text = " ".join((thing.__doc__ or "").strip().split("\n\n")[0].split())
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    return text.replace("``", "`")


def _input_heading(label: str, form: type[BaseModel]) -> str:
    key = next(iter(form.model_fields))
    return f"input: {label} (`{key}:`)"


# -- docs/configuration.md ---------------------------------------------------------------------


def render_configuration() -> str:
    """docs/configuration.md as the models define it now."""
    spec = feature_spec.FeatureSpec
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the pydantic models by `{COMMAND}`; do not edit by hand:",
        "     change a field's description in the code and run the command again. -->",
        "",
        "One YAML file, validated before any work starts. An error names the field, the value and what is",
        "allowed (for a feature, an unknown field names the encoder's own options and the closest one).",
        "Relative paths in a feature (`checkpoint`, `model_config_file`, a `./model` folder) and an",
        "`interactions.path` resolve against the YAML file's folder. [examples/lens.yaml](../examples/lens.yaml)",
        "is a complete example; the sections below list every field, with its type, default and description,",
        "as the code defines them.",
        "",
        f"Names of features, semantic IDs and graphs match `{NAME.pattern}` (they become table and file names).",
        "",
    ]
    for heading, path, model, about in SECTIONS:
        level = (
            "##"
            if model in (IngestConfig, CatalogConfig, DecodeConfig, StagingConfig, spec, SemanticIdSpec, GraphSpec)
            else "###"
        )
        out += [f"{level} {heading}", ""]
        if path:
            out += [f"`{path}`", ""]
        out += [about, ""]
        if model is None:
            out += _inputs()
            continue
        out += _table(model, spec.EXECUTION_FIELDS if model is spec else frozenset())
        out.append("")
        if model is spec:
            out += [
                "The **fingerprint** of a feature (its version) hashes what changes the stored output: these "
                "fields but " + ", ".join(f"`{f}`" for f in sorted(spec.EXECUTION_FIELDS)) + ", the encoder's own "
                "options, and the weights' identity (a hub id and revision, or the SHA-256 of local files) in "
                "place of " + ", ".join(f"`{f}`" for f in sorted(spec.WEIGHTS_FIELDS)) + ". A changed "
                "fingerprint is a new version (`text@v2`); the old one stays readable.",
                "",
            ]
        if model is SemanticIdSpec:
            out += ["Registered methods: " + ", ".join(f"`{m}`" for m in quantizer_names()) + ".", ""]
        if model is GraphSpec:
            out += [
                "Registered presets: "
                + ", ".join(f"`{p}`" for p in preset_names())
                + " ([the presets table](graphs.md#presets)).",
                "",
            ]
        if model is feature_spec.IndexSpec:
            out += _encoders()
    out += [
        "## Only semantic_ids and graphs",
        "",
        "`itemlens semantic-ids` and `itemlens graph` also take a file with only "
        + ", ".join(f"`{f}:`" for f in DerivedConfig.model_fields)
        + " (no `features:`): the definitions then derive from whatever the store holds, features ingested or "
        "vectors put with `lens.put_vectors`, and their input features are checked against the store. The "
        "fields are those above.",
        "",
    ]
    return "\n".join(out)


def _inputs() -> list[str]:
    out = []
    for label, form, about in INPUT_FORMS:
        out += [f"#### {_input_heading(label, form)}", "", about, ""]
        out += _table(form)
        out.append("")
    return out


def _encoders() -> list[str]:
    about = (
        "Each encoder declares its own options as a model (its `spec_model`, registered in "
        "[extractors/registry.py](../extractors/registry.py)); a feature may set the common fields above and "
        "its encoder's options below, nothing else. [encoders.md](encoders.md) says what each encoder does."
    )
    out = ["### Encoder options", "", about, ""]
    for name, model in encoder_models():
        cls = encoder_class(name)
        about = (
            f"{_docline(model)} Takes {', '.join(sorted(cls.input_kinds))} input; stores a {cls.output_kind} "
            f"per item. Options model: `{model.__module__}.{model.__name__}`."
        )
        out += [f"#### encoder: {name}", "", about, ""]
        if own_fields(model):
            out += _table(model, model.EXECUTION_FIELDS - feature_spec.FeatureSpec.EXECUTION_FIELDS)
        else:
            out.append("No options beyond the common fields.")
        out.append("")
    return out


# -- docs/cli.md's block: the parser ---------------------------------------------------------------


def render_cli() -> str:
    """Every command and option of the command line, from its parser."""
    from itemlens.workflows.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in commands._choices_actions}
    out = []
    for name, sub in commands.choices.items():
        actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        positionals = [a for a in actions if not a.option_strings]
        required = [a for a in actions if a.option_strings and a.required]
        synopsis = " ".join(
            [
                "itemlens",
                name,
                *(_metavar(a) for a in positionals),
                *(f"{a.option_strings[-1]} {_metavar(a)}" for a in required),
            ]
        )
        if len(required) < len(actions) - len(positionals):
            synopsis += " [options]"
        about = helps.get(name) or ""
        out += [f"### itemlens {name}", "", _cell(about[:1].upper() + about[1:]).rstrip(".") + ".", ""]
        if sub.description:
            out += [sub.description, ""]
        out += ["```", synopsis, "```", "", "| argument | default | description |", "|---|---|---|"]
        for action in actions:
            label = (
                _metavar(action)
                if not action.option_strings
                else ", ".join(action.option_strings) + ("" if action.nargs == 0 else f" {_metavar(action)}")
            )
            out.append(f"| {_cell(f'`{label}`')} | {_cli_default(action)} | {_cell(_cli_help(action))} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


#: what an argument that the parser leaves without help means, by its name (the same in every command)
SHARED_ARGUMENTS = {
    "store": "the store: a local folder, or an s3:// gs:// az:// URI",
    "snapshot": "the snapshot (default: the latest)",
    "wait_for_lock": "wait this long for another writer to finish (default: fail at once)",
}


def _cli_help(action: argparse.Action) -> str:
    text = (action.help or SHARED_ARGUMENTS.get(action.dest, "")).rstrip(".")
    extras = []
    if action.choices is not None and not all(str(c) in text for c in action.choices):
        extras.append("one of " + ", ".join(map(str, action.choices)))
    if isinstance(action, argparse._AppendAction) and "repeat" not in text:
        extras.append("repeat for several" if action.nargs is None else "takes several values, and repeats")
    return "; ".join([t for t in (text, *extras) if t])


def _cli_default(action: argparse.Action) -> str:
    if action.required or (not action.option_strings and action.nargs is None):
        return "required"
    if action.default is None or action.default is False or action.nargs == 0:
        return ""
    return f"`{action.default}`"


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    return action.dest.upper()


# -- docs/graphs.md's block: the presets ----------------------------------------------------------

_NORMALIZATIONS = {
    "sym": "D^-1/2 A D^-1/2 (D: the row sums of A)",
    "rw": "D^-1 A (row-normalized)",
    "none": "none: the weights as they are",
    "hypergraph": "HGNN's Dv^-1/2 H W De^-1 H^T Dv^-1/2 over H = [B_1 \\| B_2 ...], B[i, j] = 1 when i is "
    "among j's kNN",
}


def render_presets() -> str:
    """The registered graph presets as a table."""
    out = ["| preset | edge weights | normalization | follows |", "|---|---|---|---|"]
    for name in preset_names():
        preset = get_preset(name)
        norm = preset.normalization
        norm_text = (
            _NORMALIZATIONS.get(norm, norm)
            if isinstance(norm, str)
            else (_docline(norm) if hasattr(norm, "__doc__") and norm.__doc__ else getattr(norm, "__name__", "custom"))
        )
        weights = "1 per kNN edge" if preset.weights == "binary" else "the cosine score"
        out.append(f"| `{name}` | {weights} | {norm_text} | {_cell(preset.follows)} |")
    return "\n".join(out) + "\n"


# -- writing and checking -------------------------------------------------------------------------

#: the generated files: whole, or a block between markers in a page written by hand
TARGETS: dict[str, tuple[str | None, Callable[[], str]]] = {
    "docs/configuration.md": (None, render_configuration),
    "docs/cli.md": ("cli", render_cli),
    "docs/graphs.md": ("presets", render_presets),
}


def _markers(block: str) -> tuple[str, str]:
    return (
        f"<!-- BEGIN GENERATED {block}: {COMMAND} writes this block; do not edit it by hand -->",
        f"<!-- END GENERATED {block} -->",
    )


def rendered(path: str, current: str | None = None) -> str:
    """The file at ``path`` (relative to the repository root) as it should be now: rendered
    whole, or ``current`` with its generated block rendered again."""
    block, render = TARGETS[path]
    if block is None:
        return render()
    if current is None:
        current = (ROOT / path).read_text()
    begin, end = _markers(block)
    if begin not in current or end not in current:
        raise ValueError(f"{path} has no generated block: put the two lines\n{begin}\n{end}\nwhere it goes")
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{render()}{end}{tail}"


def stale() -> list[str]:
    """The generated files that differ from what the code renders now."""
    return [path for path in TARGETS if (ROOT / path).read_text() != rendered(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"{path} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1 if paths else 0
    for path in TARGETS:
        target = ROOT / path
        text = rendered(path)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            print(f"wrote {path}")
    missing = undocumented()
    if missing:
        print("fields without a description (shown as **undocumented**): " + ", ".join(missing), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

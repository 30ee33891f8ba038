"""`import itemlens` is light: the client must be importable in serving code without torch or Ray."""

import subprocess
import sys

HEAVY = ("torch", "ray", "transformers", "open_clip", "sentence_transformers", "faiss", "matplotlib")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_import_itemlens_pulls_in_no_heavy_library():
    loaded = _modules_after("import itemlens")
    assert not [m for m in HEAVY if m in loaded]


def test_the_reading_client_needs_neither_torch_nor_ray(tmp_path):
    code = (
        "import numpy as np, itemlens\n"
        f"lens = itemlens.connect.__module__\n"
        "from itemlens.store.writer import StoreWriter\n"
        f"StoreWriter.open({str(tmp_path)!r}).close()\n"
        f"lens = itemlens.connect({str(tmp_path)!r})\n"
        "lens.put_vectors('v', ['a', 'b'], np.eye(2, dtype='float32'), spec={'model': 'x'})\n"
        "assert lens.vectors('v', ['b'])[0, 1] == 1\n"
        "assert lens.search('v', [1.0, 0.0], k=1)[0].item_id == 'a'\n"
    )
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded]


def test_extractors_and_store_import_without_workflows():
    loaded = _modules_after("import itemlens.extractors, itemlens.store")
    assert "itemlens.workflows" not in loaded
    assert "ray" not in loaded


def test_every_error_the_docs_name_is_an_itemlens_error_and_a_builtin():
    """docs/client.md: catch the itemlens type or the usual Python one, from ``itemlens`` itself."""
    import itemlens

    for name in [n for n in itemlens.__all__ if n.endswith("Error") and n != "ItemlensError"]:
        error = getattr(itemlens, name)
        assert issubclass(error, itemlens.ItemlensError), name
        builtin = [b for b in error.__mro__[1:] if b.__module__ == "builtins"]
        assert [b for b in builtin if b not in (Exception, BaseException, object)], name

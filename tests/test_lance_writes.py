"""The Lance write path itemlens relies on, proven on the pinned versions (constraints.txt)."""

import lance
import pyarrow as pa
import pytest

from itemlens.store import lance_io
from itemlens.workflows import stages

pytestmark = pytest.mark.integration


def test_fragments_written_by_ray_tasks_commit_in_one_transaction(ray_session, tmp_path):
    import ray.data

    uri = str(tmp_path / "t.lance")
    rows = pa.table({"item_id": [f"i{i}" for i in range(300)], "x": list(range(300))})
    ds = (
        ray.data.from_arrow(rows)
        .repartition(3)
        .map_batches(stages.write_fragments, fn_kwargs={"uri": uri}, batch_format="pyarrow")
    )
    fragments = [
        f for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") for f in b.column("fragment").to_pylist()
    ]
    assert len(fragments) == 3
    assert lance_io.open_dataset(uri) is None  # nothing visible before the commit
    dataset = lance_io.commit_fragments(uri, fragments, rows.schema)
    assert dataset.version == 1 and dataset.count_rows() == 300
    more = lance_io.write_fragments(rows.slice(0, 10), uri)
    assert lance_io.commit_fragments(uri, more, rows.schema).version == 2
    assert sorted(lance.dataset(uri).to_table().column("x").to_pylist()) == sorted(list(range(300)) + list(range(10)))


def test_ray_write_lance_still_rejected_by_the_pinned_pylance(ray_session, tmp_path):
    """Why itemlens writes fragments itself. When this starts failing, Ray's write_lance works
    with the pinned pylance and the hand-written stage can go."""
    import ray.data

    with pytest.raises(Exception, match="storage_options_provider"):
        ray.data.from_arrow(pa.table({"x": [1, 2]})).write_lance(str(tmp_path / "w.lance"))

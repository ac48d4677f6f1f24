"""The HDF5 store every generator writes and every consumer reads.

See :mod:`distill_data.store.schema` for the file layout (format ``distill-data``,
version 1). In short::

    write_store("out.h5", SyntheticSet(images, labels, meta))   # atomic
    synset = read_store("out.h5")                                # checked
    ds = load("out.h5", augment=flip)                            # torch Dataset
"""

from distill_data.store.checkpoint import (
    CHECKPOINT_SUFFIX,
    checkpoint_path_for,
    load_checkpoint,
    save_checkpoint,
)
from distill_data.store.dataset import SyntheticDataset, load
from distill_data.store.io import atomic_write, read_info, read_meta, read_store, write_store
from distill_data.store.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    StoreInfo,
    StoreMeta,
    SyntheticSet,
)

__all__ = [
    "CHECKPOINT_SUFFIX",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "StoreInfo",
    "StoreMeta",
    "SyntheticDataset",
    "SyntheticSet",
    "atomic_write",
    "checkpoint_path_for",
    "load",
    "load_checkpoint",
    "read_info",
    "read_meta",
    "read_store",
    "save_checkpoint",
    "write_store",
]

"""distill-data: dataset distillation and data-free synthetic calibration sets.

Public API::

    import distill_data as dd
    dd.build("mnist5k", "herding", ipc=10, out="mnist_herding.h5")
    ds = dd.load("mnist_herding.h5")          # a torch Dataset
    report = dd.evaluate("mnist_herding.h5", runs=3, epochs=300)
    dd.train("mnist5k", "student.pt", teacher="t.pt", quant="lsq", bits="w4a4")
    dd.list_methods(); dd.list_datasets()
    dd.tune_allocator()   # optional: faster CPU runs (glibc keeps freed pages for reuse)
"""

from distill_data import (
    dist,  # torchrun: dd.dist.leave(0) ends a script's rank
    train,  # the package, callable as dd.train(...) (api.train)
)
from distill_data._version import __version__
from distill_data.api import (
    build,
    evaluate,
    list_datasets,
    list_methods,
    load,
    quantize,
    teacher,
)
from distill_data.errors import DistillDataError
from distill_data.runtime import tune_allocator

__all__ = [
    "DistillDataError",
    "__version__",
    "build",
    "dist",
    "evaluate",
    "list_datasets",
    "list_methods",
    "load",
    "quantize",
    "teacher",
    "train",
    "tune_allocator",
]

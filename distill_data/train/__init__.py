"""Shared trainer: one training loop (:func:`fit`) driven by a :class:`TrainRecipe`, the
distillation losses, teachers and the student trainer.

The package is also callable: ``distill_data.train(...)`` is
:func:`distill_data.api.train` (the student trainer's verb, ``dd.train``), while
``distill_data.train.fit``, ``.TrainRecipe`` and the rest stay reachable as attributes.
"""

import sys
import types

from distill_data.train.fit import TrainData, fit
from distill_data.train.recipe import RECIPES, TrainRecipe, get_recipe
from distill_data.train.teacher import TeacherConfig, load_teacher, train_teacher

__all__ = [
    "RECIPES",
    "TeacherConfig",
    "TrainData",
    "TrainRecipe",
    "fit",
    "get_recipe",
    "load_teacher",
    "train_teacher",
]


_PACKAGE_DOC = __doc__


class _CallablePackage(types.ModuleType):
    """``dd.train(...)`` runs the student trainer; attribute access is the package's.
    ``inspect.signature(dd.train)`` and ``help(dd.train)`` describe the trainer."""

    def __call__(self, *args, **kwargs):
        from distill_data.api import train

        return train(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from distill_data.api import train

        return inspect.signature(train)

    @property
    def __doc__(self):  # noqa: D105 - the trainer's own docstring, then the package's
        import inspect

        from distill_data.api import train

        sig = inspect.signature(train)
        return f"{inspect.getdoc(train)}\n\nCalled as dd.train{sig}.\n\n{_PACKAGE_DOC}"


sys.modules[__name__].__class__ = _CallablePackage

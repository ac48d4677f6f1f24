"""FYI — Flip Your Images (Son et al., "FYI: Flip Your Images for Dataset
Distillation", ECCV 2024) as a plug-in for every matching generator.

Matching a synthetic image S against real images pulls it towards the *average* of a
class's bilaterally symmetric appearances. FYI matches [S, hflip(S)] instead, so the
gradient of both orientations shapes S and it stops encoding the same content twice.
As in the official code (cvlab-yonsei/FYI, DC_DSA_DM): each class's synthetic batch is
concatenated with its horizontal flip before augmentation; the real batch is not
doubled; flip leaves the DSA op pool and a siamese random flip is always applied first;
only S is stored, so IPC accounting is unchanged.

Use ``--set fyi=true`` with any matching method, or the method names ``dm+fyi``,
``datadam+fyi``, ``ncfm+fyi`` registered here (the same generators with ``fyi`` on).
"""

from __future__ import annotations

import dataclasses

from distill_data.errors import ConfigError, setting
from distill_data.synth import datadam, dm, ncfm  # noqa: F401  (register the bases first)
from distill_data.synth.base import GENERATORS
from distill_data.synth.matching import MatchingGenerator


def with_fyi(cls: type[MatchingGenerator], name: str) -> type[MatchingGenerator]:
    """The generator ``cls`` (registered as ``name``) with its config's ``fyi`` default
    switched on, and ``fyi=false`` refused (use ``name`` itself)."""
    cfg = dataclasses.make_dataclass(
        cls.Config.__name__.replace("Config", "FYIConfig"),
        [("fyi", bool, dataclasses.field(default=True))],
        bases=(cls.Config,),
        frozen=True,
    )
    cfg.__doc__ = f"{cls.Config.__doc__}\n\nFYI on (flip-augmented synthetic batches)."

    @classmethod
    def check_config(sub, config) -> None:
        cls.check_config.__func__(sub, config)
        if not config.fyi:  # the file would say dm+fyi while FYI was off
            raise ConfigError(
                f"{name}+fyi is {name} with FYI switched on: for FYI off, build with "
                f"{name} itself instead of setting {setting('fyi')} to false"
            )

    return type(
        f"{cls.__name__}FYI",
        (cls,),
        {"Config": cfg, "__doc__": cls.__doc__, "check_config": check_config},
    )


for _name in ("dm", "datadam", "ncfm"):
    _base = GENERATORS.get(_name)
    GENERATORS.register(f"{_name}+fyi", f"{GENERATORS.help(_name)} + FYI flip plug-in (ECCV 2024)")(
        with_fyi(_base, _name)
    )

"""The spec's ``tracking:`` section, the one definition of W&B tracking (``bnsweep.store.tracking`` uses it as is):
the keys accepted are exactly the keys that work.

>>> TrackingConfig(mode="offline", tags=["paper"]).tags
('paper',)
>>> try:
...     TrackingConfig(mode="bogus")
... except ValueError as e:
...     print(e)
tracking.mode: expected one of auto, offline, online, disabled, received 'bogus'
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from bnsweep.spec.fields import Allowed, ListOut, Number, Section

__all__ = ["TrackingConfig"]

NonEmpty = Annotated[str, Field(min_length=1)]


class TrackingConfig(Section):
    """Weights & Biases tracking (``bnsweep.store.tracking``): one run per trial replicate, one summary run.

    ``mode: auto`` logs online only when an API key is configured, else offline (sync later with ``wandb sync``).
    Built directly (as the store layer does), a bad value raises ``ConfigError`` (``tracking.mode: ...``).
    """

    _key: ClassVar[str] = "tracking"

    wandb: bool = Field(True, description="log to W&B (false: never import wandb)")
    project: NonEmpty | None = Field("bnsweep", description="W&B project")
    entity: NonEmpty | None = Field(None, description="W&B entity (team or user); empty: your default")
    mode: Literal["auto", "offline", "online", "disabled"] = Field(
        "auto", description="auto: online when an API key is configured, else offline; disabled: no W&B")
    group: NonEmpty | None = Field(None, description="W&B group prefix (default: the sweep name); the runs of a "
                                                     "configuration are grouped as GROUP/<config hash>")
    tags: Annotated[tuple[NonEmpty, ...], Field(strict=False), ListOut, Allowed("a list of strings")] = Field(
        (), description="W&B tags of every run of the sweep")
    init_timeout: Annotated[Number, Field(gt=0, le=3600)] = Field(
        20.0, description="seconds wandb.init may take (online: reaching the server) before W&B is switched off")

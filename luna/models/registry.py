"""Every network luna trains, by name: what rebuilds a model from the config in its checkpoint.

A checkpoint keeps ``model.config``, a small JSON-able dict whose ``name`` is a key of
:data:`MODELS`; :func:`build_model` turns it back into the network, whichever kind it is.
:func:`model_kind` tells a classifier from a segmentation model, so that a command given the
wrong checkpoint says so in one line.
"""
from __future__ import annotations

from torch import nn

from luna.errors import DataError
from luna.models.classifier import CLASSIFIERS
from luna.models.unet import SEGMENTERS

MODEL_KINDS = {"classifier": CLASSIFIERS, "segmentation": SEGMENTERS}
MODELS: dict[str, type[nn.Module]] = {name: cls for family in MODEL_KINDS.values() for name, cls in family.items()}

# Checkpoints from before models had names held the reference classifier.
DEFAULT_MODEL = "luna"


def build_model(config: dict) -> nn.Module:
    """Rebuild a network from its ``config`` (as stored in a checkpoint).

    Args:
        config: a dict with ``name`` (a key of :data:`MODELS`) and that model's keyword
            arguments, e.g. ``{"name": "luna", "in_channels": 1, "conv_channels": 8}``.

    Returns:
        A freshly initialised model on the CPU.

    Raises:
        DataError: unknown model name or arguments the model does not take (a checkpoint
            from another version, or a hand-edited one).
    """
    kwargs = dict(config)
    name = kwargs.pop("name", DEFAULT_MODEL)
    if name not in MODELS:
        raise DataError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot build model {name!r} from {config!r}: {exc}") from exc


def model_kind(name: str | None) -> str | None:
    """``"classifier"`` or ``"segmentation"`` for a model name; None for an unknown one."""
    name = DEFAULT_MODEL if name is None else name
    return next((kind for kind, family in MODEL_KINDS.items() if name in family), None)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of a model.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        The total element count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

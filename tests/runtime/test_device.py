import pytest
import torch

from luna.errors import UsageError
from luna.runtime.device import resolve_device, resolve_performance


def test_performance_auto_choices():
    perf = resolve_performance("auto", "auto", torch.device("cpu"))
    assert perf.precision == "bf16" and perf.channels_last
    assert resolve_performance("fp32", "off", torch.device("cpu")).channels_last is False
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        resolve_performance("fp16", "auto", torch.device("cpu"))


def test_device_values():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="--device must be"):
        resolve_device("tpu")

import pytest
import torch

from luna.errors import UsageError
from luna.runtime import device as device_module
from luna.runtime.device import cpu_has_fast_bf16, resolve_device, resolve_performance


def test_performance_auto_choices():
    perf = resolve_performance("auto", "auto", torch.device("cpu"))
    # bf16 only where oneDNN has native kernels for it; AVX2-only CPUs run it ~20x slower than fp32.
    assert perf.precision == ("bf16" if cpu_has_fast_bf16() else "fp32") and perf.channels_last
    assert resolve_performance("fp32", "off", torch.device("cpu")).channels_last is False
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        resolve_performance("fp16", "auto", torch.device("cpu"))


def test_device_values():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="--device must be"):
        resolve_device("tpu")


def test_cpu_bf16_follows_the_instruction_set():
    # oneDNN's bf16 kernels need AVX-512 at least: a CPU that stops at AVX2 has none.
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        assert not cpu_has_fast_bf16()


@pytest.mark.parametrize("fast, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_either_kind_of_cpu(monkeypatch, caplog, fast, expected):
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: fast)
    assert resolve_performance("auto", "auto", torch.device("cpu")).precision == expected
    # Asked for by name, bf16 is kept, with a warning where it is slow.
    assert resolve_performance("bf16", "auto", torch.device("cpu")).precision == "bf16"
    assert ("many times slower" in caplog.text) is not fast

"""hrnet_pyg.runtime: the helpers every layer of the package shares, and the HRNet facade."""
import pytest
import torch
from torch import nn

from hrnet_pyg.runtime import check_features, is_main_process, unwrap_model


def test_unwrap_model_strips_every_wrapper_in_any_nesting():
    net = nn.Linear(3, 2)
    compiled = torch.compile(net, backend="eager")  # wrapping only: nothing is compiled until called
    assert unwrap_model(net) is net
    assert unwrap_model(compiled) is net
    assert unwrap_model(nn.DataParallel(net)) is net
    assert unwrap_model(torch.compile(nn.DataParallel(compiled), backend="eager")) is net


def test_unwrap_model_leaves_a_module_that_merely_has_a_module_attribute():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    holder = Holder()
    assert unwrap_model(holder) is holder


def test_is_main_process_outside_torch_distributed():
    assert not torch.distributed.is_initialized()
    assert is_main_process()


@pytest.mark.parametrize("args, kwargs, message", [
    ((torch.zeros(3),), {"name": "x"}, "x must have shape (N, d), got (3,)"),
    ((torch.zeros(2, 4), 5, "Conv"), {"name": "f"}, "Conv: f must be a 2-D tensor with 5 channels, got (2, 4)"),
    (([1, 2], 4, "Conv"), {"name": "f", "dims": (2, 3)},
     "Conv: f must be a 2-D or 3-D tensor with 4 channels, got list"),
])
def test_check_features_names_the_argument_and_the_shape(args, kwargs, message):
    with pytest.raises(ValueError) as info:
        check_features(*args, **kwargs)
    assert str(info.value) == message


def test_check_features_accepts_what_it_is_asked_for():
    check_features(torch.zeros(2, 4))
    check_features(torch.zeros(2, 3, 4), 4, "Conv", "f", dims=(2, 3))
    check_features(torch.zeros(5), 5, dims=range(1, 8))


def test_the_facade_adds_the_engine_verbs_to_the_modeling_class(tmp_path):
    import hrnet_pyg
    import hrnet_pyg.model
    from hrnet_pyg.config import HRNetConfig
    from hrnet_pyg.engine import load_model

    assert issubclass(hrnet_pyg.HRNet, hrnet_pyg.model.HRNet)
    for verb in ("fit", "extract", "evaluate", "save", "load"):
        assert hasattr(hrnet_pyg.HRNet, verb) and not hasattr(hrnet_pyg.model.HRNet, verb)
    cfg = HRNetConfig(backbone=None, feat_dim=8, num_identities=2, num_instances=2, k=2)
    torch.manual_seed(0)
    plain = hrnet_pyg.model.HRNet(cfg, num_classes=4)
    path = tmp_path / "m.pth"
    hrnet_pyg.HRNet.save(plain, path)  # the facade's save takes a plain model as well
    loaded = hrnet_pyg.HRNet.load(path)
    assert type(loaded) is hrnet_pyg.HRNet
    assert type(load_model(path)) is hrnet_pyg.model.HRNet
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)

import pytest
import torch

from dpir_fast import CheckpointError, DPIR, load_checkpoint, save_checkpoint
from dpir_fast.checkpoints import extract_state_dict
from dpir_fast.models import FusionNet, MIRNet

from .helpers import tiny_pipeline, tiny_swinir


def perturbed_state(model, shift=1.0):
    return {k: v + shift if v.is_floating_point() else v for k, v in model.state_dict().items()}


def test_wrapper_preference_and_module_prefix():
    model = MIRNet(in_channels=4, n_feat=8, n_rrg=1, n_msrb=1)
    good = perturbed_state(model, 1.0)
    worse = perturbed_state(model, 2.0)
    ckpt = {"params_ema": {f"module.{k}": v for k, v in good.items()}, "params": worse, "epoch": 3}
    load_checkpoint(model, ckpt)
    assert torch.equal(model.conv_in.weight, good["conv_in.weight"])
    assert extract_state_dict({"params": worse})["conv_in.weight"] is worse["conv_in.weight"]
    assert extract_state_dict({"state_dict": good, "optimizer": {}})["conv_in.weight"] is good["conv_in.weight"]


def test_official_mirnet_checkpoint_file(tmp_path):
    """swz30/MIRNet saves {'epoch', 'state_dict', 'optimizer'} with DataParallel 'module.' keys."""
    src = MIRNet(n_feat=8, n_rrg=1, n_msrb=1)
    path = tmp_path / "model_best.pth"
    torch.save({"epoch": 10, "state_dict": {f"module.{k}": v for k, v in perturbed_state(src, 0.01).items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    dst = load_checkpoint(MIRNet(n_feat=8, n_rrg=1, n_msrb=1), path)
    x = torch.rand(1, 3, 8, 8)
    src.load_state_dict(perturbed_state(src, 0.01))
    torch.testing.assert_close(dst(x), src(x))


def test_swinir_buffers_are_recomputed_not_trusted(tmp_path):
    small = tiny_swinir(img_size=8)
    small_state = small.state_dict()
    assert any(k.endswith("attn_mask") for k in small_state)
    torch.save({"params": small_state}, tmp_path / "swinir.pth")
    big = load_checkpoint(tiny_swinir(img_size=12), tmp_path / "swinir.pth")   # other mask shape
    x = torch.rand(1, 3, 12, 12)
    torch.testing.assert_close(big.eval()(x), small.eval()(x))
    stripped = {k: v for k, v in small_state.items() if not k.endswith(("attn_mask", "relative_position_index"))}
    load_checkpoint(tiny_swinir(img_size=12), {"params": stripped})


def test_wrong_architecture_is_named(tmp_path):
    torch.save({"state_dict": MIRNet(n_feat=8, n_rrg=1, n_msrb=1).state_dict()}, tmp_path / "den.pth")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(FusionNet(n_feat=8, growth=4), tmp_path / "den.pth")
    save_checkpoint(FusionNet(n_feat=8, growth=4), tmp_path / "fusion.pt")
    with pytest.raises(CheckpointError, match="holds a FusionNet, not a MIRNet"):
        load_checkpoint(MIRNet(n_feat=8), tmp_path / "fusion.pt")


def test_wrong_scale_and_wrong_width_are_explained():
    x2 = tiny_swinir(upscale=2, upsampler="pixelshuffle", embed_dim=12)
    x4 = tiny_swinir(upscale=4, upsampler="pixelshuffle", embed_dim=12)
    with pytest.raises(CheckpointError, match="another scale"):
        load_checkpoint(x4, {"params": x2.state_dict()})
    with pytest.raises(CheckpointError, match="another width"):
        load_checkpoint(tiny_swinir(embed_dim=16), {"params": tiny_swinir(embed_dim=12).state_dict()})
    with pytest.raises(CheckpointError, match="layer counts differ"):
        load_checkpoint(MIRNet(n_feat=8, n_rrg=2, n_msrb=1), MIRNet(n_feat=8, n_rrg=1, n_msrb=1).state_dict())


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(MIRNet(n_feat=8), tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(MIRNet(n_feat=8), tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(MIRNet(n_feat=8), tmp_path / "list.pth")


def test_pipeline_round_trip(tmp_path):
    pipe = tiny_pipeline(tau=4, start="forward")
    for p in pipe.fusion.parameters():
        p.data.add_(0.01)
    path = save_checkpoint(pipe, tmp_path / "sub" / "pipe.pt")
    assert not list(path.parent.glob("*.tmp"))
    again = DPIR.from_checkpoint(path)
    assert again.settings["start"] == "forward" and again.tau == 4
    assert again.settings["dtype"] is None   # precision is the running machine's choice, not the file's
    again.configure(dtype=pipe.dtype_name)
    y = torch.rand(1, 3, 7, 9)
    torch.testing.assert_close(again(y, seed=3), pipe(y, seed=3), rtol=0, atol=0)
    sr = DPIR.from_checkpoint(path, task="sr4x")
    assert sr.nfe == 51
    assert DPIR.from_checkpoint(path, task="deblur", tau=2).nfe == 3


def test_the_ir_ensemble_is_kept_and_older_and_newer_files_are_handled(tmp_path):
    path = save_checkpoint(tiny_pipeline(tau=2, ir_ensemble=4), tmp_path / "pipe.pt")
    record = torch.load(path, weights_only=True)
    assert record["version"] == 2 and DPIR.from_checkpoint(path).settings["ir_ensemble"] == 4
    del record["pipeline"]["ir_ensemble"]   # what version 1 wrote
    record["version"] = 1
    assert DPIR.from_checkpoint(record).settings["ir_ensemble"] == 1
    record["version"] = 3
    with pytest.raises(CheckpointError, match="format version 3, newer than this dpir_fast reads .2.; upgrade"):
        DPIR.from_checkpoint(record)


def test_a_model_file_is_not_a_pipeline(tmp_path):
    save_checkpoint(MIRNet(n_feat=8), tmp_path / "mirnet.pt")
    with pytest.raises(CheckpointError, match="single MIRNet"):
        DPIR.from_checkpoint(tmp_path / "mirnet.pt")
    with pytest.raises(CheckpointError, match="cannot save"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "linear.pt")

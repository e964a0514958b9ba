"""The ``parallel`` config group (polycom/train/parallel.py) and the atomic HF export, in one process.

The two-process runs of train.py under DDP and FSDP2 are in tests/test_distributed.py."""

import pytest
import torch
from omegaconf import OmegaConf

from polycom.train.build import compose_config
from polycom.train.config import ParallelConfig
from polycom.train.parallel import WRAP_UNIT, build_accelerator, check_parallel_config, fsdp_plugin
from polycom.train.validate import ConfigError


def _parallel(**values):
    return OmegaConf.merge(OmegaConf.structured(ParallelConfig), values)


def test_parallel_group_composes_and_defaults_to_ddp():
    assert compose_config([]).parallel.name == "ddp"
    fsdp = compose_config(["parallel=fsdp"]).parallel
    assert (fsdp.name, fsdp.reshard_after_forward, fsdp.param_dtype, fsdp.reduce_dtype) == ("fsdp", True, None,
                                                                                            "float32")
    with pytest.raises(Exception, match="no_such_key"):
        compose_config(["parallel=fsdp", "parallel.no_such_key=1"])


@pytest.mark.parametrize("values, key", [({"name": "zero3"}, "parallel.name"),
                                         ({"param_dtype": "bf16"}, "parallel.param_dtype"),
                                         ({"reduce_dtype": "int8"}, "parallel.reduce_dtype")])
def test_bad_parallel_values_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        check_parallel_config(_parallel(**values))


def test_fsdp_launch_config_without_parallel_fsdp_is_refused(monkeypatch):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` with parallel=ddp would run Accelerate's
    default FSDP (bf16 reduction), not the project's: refused before anything is built."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    trainer = OmegaConf.create({"device": "cpu", "mixed_precision": "no"})
    with pytest.raises(ConfigError, match="parallel=fsdp"):
        build_accelerator(trainer, _parallel(name="ddp"))


def test_fsdp_plugin_keeps_fp32_reduction_and_wraps_decoder_layers():
    from polycom.model import modeling

    plugin = fsdp_plugin(_parallel(name="fsdp"))
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.mixed_precision_policy.param_dtype is None  # as stored (fp32): autocast decides the compute dtype
    assert plugin.mixed_precision_policy.reduce_dtype == torch.float32
    assert plugin.transformer_cls_names_to_wrap == [WRAP_UNIT] and hasattr(modeling, WRAP_UNIT)
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    half = fsdp_plugin(_parallel(name="fsdp", param_dtype="bfloat16")).mixed_precision_policy
    assert half.param_dtype == torch.bfloat16 and half.reduce_dtype == torch.float32


def _summary() -> dict:
    return {"activation": "polynorm", "activation_order": 3, "seed": 0, "num_params": 1, "num_params_active": 1,
            "ffn_hidden_size": 1, "tokens": 1, "steps": 1, "val_loss": 1.0, "val_ppl": 2.7, "val_tokens": 1}


def test_export_replaces_hf_only_when_complete(tmp_path, make_tiny_model, tiny_tokenizer, monkeypatch):
    from accelerate import Accelerator

    from polycom.train.export import export_hf

    accelerator, model = Accelerator(cpu=True), make_tiny_model()
    export_hf(accelerator, model, tiny_tokenizer, tmp_path, _summary())
    first = (tmp_path / "hf" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.model.layers[0].mlp.act.weight.add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(type(tiny_tokenizer), "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space"):  # fails after the weights were written
        export_hf(accelerator, model, tiny_tokenizer, tmp_path, _summary())
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == first  # the complete export is untouched
    assert (tmp_path / "hf.tmp" / "model.safetensors").read_bytes() != first  # the partial one lies aside
    monkeypatch.undo()
    export_hf(accelerator, model, tiny_tokenizer, tmp_path, _summary())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() != first and (tmp_path / "hf" / "README.md").exists()

"""How the code is put together: one model schema, the run-record contract, pluggable loggers, one-way imports."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from polycom.model.activations import ACTIVATIONS
from polycom.model.config import ModelSchema, PolyComConfig
from polycom.runs import ACTIVATION_ORDER, RunSummary, is_result_metric, run_name
from test_train import _losses, _train


def test_the_model_group_is_derived_from_the_model_config():
    schema = {f.name: f.default for f in dataclasses.fields(ModelSchema)}
    own = PolyComConfig.__annotations__
    assert set(schema) - set(own) == {"ffn_width_multiple"}
    for key in schema.keys() & own.keys():
        if key != "intermediate_size":  # the schema's is the gated width every activation is matched to
            assert schema[key] == getattr(PolyComConfig, key), key
    assert {"vocab_size", "activation", "eos_token_id"} <= set(own) - set(schema)


def test_one_set_of_model_checks_names_the_key_of_either_config():
    from polycom.model.config import check_schema

    with pytest.raises(ValueError, match=r"model.hidden_size=100 is not divisible by model.num_attention_heads=3"):
        check_schema({**dataclasses.asdict(ModelSchema()), "hidden_size": 100, "num_attention_heads": 3},
                     {"name": "gelu", "order": 3, "eps": 1e-6})
    with pytest.raises(ValueError, match=r"^hidden_size=100 is not divisible by num_attention_heads=3"):
        PolyComConfig(hidden_size=100, num_attention_heads=3)


def test_report_order_is_the_registry_order():
    assert ACTIVATION_ORDER == tuple(ACTIVATIONS)


def test_run_names_and_metric_keys():
    assert run_name("polynorm", 1) == "polynorm-s1" and run_name("relu", 0, None) == "relu-s0"
    assert run_name("polynorm", 2, order=2) == "polynorm-r2-s2"
    assert run_name("gelu", 0, 3, "lr0.004") == "gelu-s0-lr0.004"
    assert is_result_metric("arc_easy/acc") and is_result_metric("analysis/erank_up")
    assert not is_result_metric("polycom/layer0/a0") and not is_result_metric("val_loss")


def test_summary_json_is_a_run_summary(tmp_path):
    summary = _train(tmp_path, ["trainer.max_steps=3", "activation=gelu"])
    written = json.loads((tmp_path / "summary.json").read_text())
    fields = {f.name for f in dataclasses.fields(RunSummary)} - {"metrics", "downstream_error"}
    assert fields <= set(written) and written == summary
    assert written["activation_order"] is None  # GELU has no PolyCom order
    assert RunSummary(**{k: written[k] for k in fields}).name() == "gelu-s0"


def test_a_new_logger_is_one_sink_class(tmp_path, monkeypatch):
    """Registering a sink under a name is all a new logger needs (plus its configs/logger/<name>.yaml)."""
    from polycom.train import tracking

    seen = {"records": [], "summary": None, "closed": None}

    class MemorySink:
        def __init__(self, run_dir, cfg, run_name, group, config):
            seen["name"], seen["config"] = run_name, config

        def log(self, record):
            seen["records"].append(record)

        def summary(self, values):
            seen["summary"] = values

        def close(self, exit_code=0):
            seen["closed"] = exit_code

    monkeypatch.setitem(tracking.SINKS, "memory", MemorySink)
    _train(tmp_path, ["trainer.max_steps=4", "trainer.log_interval=1", "logger.name=memory", "logger.mode=offline"])
    assert seen["records"] == _losses(tmp_path) and len(seen["records"]) == 4
    assert seen["name"] == "polynorm-s0" and seen["config"]["activation"]["name"] == "polynorm"
    assert seen["summary"]["steps"] == 4 and seen["closed"] == 0


def _imports(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("package,forbidden", [("model", ("polycom.train", "polycom.eval", "polycom.data",
                                                          "polycom.report")),
                                               ("data", ("polycom.train", "polycom.eval", "polycom.report")),
                                               ("report", ("polycom.train", "polycom.model", "torch"))])
def test_imports_go_one_way(package, forbidden):
    for path in (REPO_ROOT / "polycom" / package).glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(forbidden)}
        assert not bad, f"{path.relative_to(REPO_ROOT)} imports {bad}"


def test_reading_runs_needs_no_torch():
    code = ("import sys, polycom.runs, polycom.report.runs, polycom.report.tables, polycom.report.stats; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


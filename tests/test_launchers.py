"""Launchers for several GPUs and nodes (configs/hydra/launcher/, polycom/train/launch.py), checked without SLURM.

What SLURM would be asked for: each launcher config goes through hydra-submitit-launcher's own `launch()` and
submitit's sbatch writer, with only the final `sbatch` call replaced (no cluster here). What each task does with
SLURM's variables: the rank mapping is run in a faked SLURM environment. A real two-task job runs on CPU through
submitit's local executor. Not covered: a real SLURM cluster, NCCL.
"""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from polycom.train.build import compose_config
from polycom.train.launch import join_submitit_job, log_to_rank_file
from test_train import TINY

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---- the sbatch script -------------------------------------------------------------------------------------------
def sbatch_script(tmp_path, monkeypatch, *overrides, jobs=(("seed=0",),)) -> str:
    """The sbatch script hydra-submitit-launcher would submit for ``train.py -m <overrides>`` with ``jobs``."""
    import hydra.utils
    import submitit
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    cfg = compose_config([*overrides, f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun is on the PATH"
    written = []

    class Submitted:
        def results(self):
            return [None]

    def map_array(self, fn, *args):  # what SlurmExecutor does up to `sbatch <file>`
        ex, n = self._executor, len(args[0])
        params = {**ex.parameters, **({"map_count": n} if n > 1 else {})}
        written.append(_make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params))
        return [Submitted() for _ in range(n)]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([list(j) for j in jobs], initial_job_idx=0)
    (script,) = written
    return script


def sbatch_flags(script: str) -> dict:
    flags = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            flags[key] = value
    return flags


@pytest.mark.parametrize("overrides, nodes, tasks, gpus", [
    (["hydra/launcher=slurm"], 1, 1, 1),  # one GPU per run, as before
    (["hydra/launcher=slurm_multi_gpu"], 1, 8, 8),
    (["hydra/launcher=slurm_multi_gpu", "hydra.launcher.gpus_per_node=4"], 1, 4, 4),  # tasks follow the GPUs
    (["hydra/launcher=slurm_multi_node"], 2, 8, 8),
    (["hydra/launcher=slurm_multi_node", "hydra.launcher.nodes=4", "hydra.launcher.gpus_per_node=2"], 4, 2, 2),
])
def test_sbatch_asks_for_one_task_per_gpu(tmp_path, monkeypatch, overrides, nodes, tasks, gpus):
    script = sbatch_script(tmp_path, monkeypatch, *overrides, "hydra.launcher.partition=gpu")
    flags = sbatch_flags(script)
    assert flags["nodes"] == str(nodes)
    assert flags["ntasks-per-node"] == str(tasks)
    assert flags["gpus-per-node"] == str(gpus)
    assert flags["cpus-per-task"] == "8" and flags["partition"] == "gpu" and flags["time"] == "720"
    # SLURM refuses --mem together with --mem-per-gpu: the multi-GPU configs ask per GPU, the one-GPU one per job
    assert ("mem" in flags) != ("mem-per-gpu" in flags)
    assert flags.get("mem-per-gpu", "64G") == "64G" and flags.get("mem", "64GB") == "64GB"
    # every task is started by srun and runs the pickled Hydra job (one rank each); SUBMITIT_EXECUTOR tells
    # polycom.train.launch it is in such a task
    assert "export SUBMITIT_EXECUTOR=slurm" in script
    command = script.rstrip().splitlines()[-1]
    assert command.startswith("srun ") and "submitit.core._submit" in command


def test_clusters_that_count_gpus_in_gres(tmp_path, monkeypatch):  # the variant slurm_multi_gpu.yaml documents
    flags = sbatch_flags(sbatch_script(tmp_path, monkeypatch, "hydra/launcher=slurm_multi_gpu",
                                       "hydra.launcher.gpus_per_node=null", "hydra.launcher.gres=gpu:8",
                                       "hydra.launcher.tasks_per_node=8"))
    assert flags["gres"] == "gpu:8" and flags["ntasks-per-node"] == "8" and "gpus-per-node" not in flags


def test_a_sweep_is_one_array_of_multi_gpu_jobs(tmp_path, monkeypatch):
    script = sbatch_script(tmp_path, monkeypatch, "hydra/launcher=slurm_multi_node",
                           'hydra.launcher.setup=["export NCCL_SOCKET_IFNAME=ib0"]',
                           jobs=[("activation=gelu",), ("activation=polynorm",), ("activation=swiglu",)])
    flags = sbatch_flags(script)
    assert flags["array"] == "0-2%3" and flags["nodes"] == "2" and flags["ntasks-per-node"] == "8"
    assert script.index("export NCCL_SOCKET_IFNAME=ib0") < script.index("srun ")


def test_local_multi_gpu_needs_the_gpu_count():
    cfg = compose_config(["hydra/launcher=local_multi_gpu", "hydra.launcher.gpus_per_node=4"], return_hydra_config=True)
    assert "LocalLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.tasks_per_node == 4
    cfg = compose_config(["hydra/launcher=local_multi_gpu"], return_hydra_config=True)
    with pytest.raises(Exception, match="gpus_per_node"):
        cfg.hydra.launcher.tasks_per_node


# ---- each task's rank ----------------------------------------------------------------------------------------------
@pytest.fixture
def clean_env():
    """os.environ as it was, whatever the code under test exported; no distributed or submitit variables inside."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key in DIST_VARS or key.startswith(("SLURM_", "SUBMITIT_")):
            del os.environ[key]
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


def slurm_task(env, procid, localid, nodeid, job_id="4242", **extra):
    """The variables srun gives task ``procid`` of a two-node job of 8 tasks per node."""
    for key in [k for k in env if k in DIST_VARS or k.startswith(("SLURM_", "SUBMITIT_"))]:
        del env[key]
    env.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=job_id, SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2",
               SLURM_NODEID=str(nodeid), SLURM_PROCID=str(procid), SLURM_LOCALID=str(localid),
               SLURM_JOB_NODELIST="gpu[01-02]", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", **extra)


def exported(env) -> dict:
    return {k: env.get(k) for k in DIST_VARS}


def test_slurm_task_becomes_a_rank_of_one_process_group(clean_env):
    slurm_task(clean_env, procid=11, localid=3, nodeid=1)
    assert join_submitit_job() == 11
    rank11 = exported(clean_env)
    assert {k: rank11[k] for k in DIST_VARS[:5]} == {
        "RANK": "11", "LOCAL_RANK": "3", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu01"}
    assert 20000 <= int(rank11["MASTER_PORT"]) <= 60000
    assert clean_env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # Accelerate picks GPU LOCAL_RANK of these

    slurm_task(clean_env, procid=0, localid=0, nodeid=0)
    assert join_submitit_job() == 0
    rank0 = exported(clean_env)
    assert rank0["RANK"] == "0" and rank0["LOCAL_RANK"] == "0"
    # the rendezvous every rank of the job agrees on
    assert (rank0["MASTER_ADDR"], rank0["MASTER_PORT"]) == (rank11["MASTER_ADDR"], rank11["MASTER_PORT"])


def test_jobs_of_an_array_rendezvous_on_different_ports(clean_env):
    ports = []
    for task in ("0", "1"):
        slurm_task(clean_env, procid=0, localid=0, nodeid=0, job_id="4300", SLURM_ARRAY_JOB_ID="4299",
                   SLURM_ARRAY_TASK_ID=task)
        join_submitit_job()
        ports.append(clean_env["MASTER_PORT"])
    assert ports[0] != ports[1]
    slurm_task(clean_env, procid=0, localid=0, nodeid=0, MASTER_PORT="29511")  # set by the user: kept
    join_submitit_job()
    assert clean_env["MASTER_PORT"] == "29511"


def test_stale_ranks_from_the_submitting_shell_are_replaced(clean_env):
    slurm_task(clean_env, procid=5, localid=5, nodeid=0, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    join_submitit_job()
    assert (clean_env["RANK"], clean_env["WORLD_SIZE"], clean_env["LOCAL_RANK"]) == ("5", "16", "5")


def test_local_executor_task(clean_env):
    clean_env.update(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="777", SUBMITIT_LOCAL_NTASKS="2",
                     SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_GLOBALID="1",
                     SUBMITIT_LOCAL_LOCALID="1")
    assert join_submitit_job() == 1
    assert exported(clean_env)["WORLD_SIZE"] == "2" and clean_env["MASTER_ADDR"] == socket.gethostname()


@pytest.mark.parametrize("case", ["plain run in a SLURM allocation", "one-task job"])
def test_nothing_is_exported_outside_a_multi_task_job(clean_env, case):
    slurm_task(clean_env, procid=3, localid=3, nodeid=0)
    if case == "one-task job":
        clean_env.update(SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1")
    else:  # `python train.py` in an salloc shell: SLURM's variables, but no submitit task around it
        del clean_env["SUBMITIT_EXECUTOR"]
    assert join_submitit_job() is None
    assert all(v is None for v in exported(clean_env).values())


def test_other_ranks_log_to_their_own_file(tmp_path):
    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "train.log")
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    root.addHandler(handler)
    try:
        log_to_rank_file(3)
        logging.getLogger("polycom.test").warning("from rank 3")
    finally:
        for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)
                  and str(tmp_path) in h.baseFilename]:
            root.removeHandler(h)
            h.close()
    assert (tmp_path / "train.rank3.log").read_text() == "[polycom.test] from rank 3\n"
    assert (tmp_path / "train.log").read_text() == ""


# ---- a real two-task job -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_task_local_job_trains_as_one_process_group(tmp_path):
    """`train.py -m hydra/launcher=local_multi_gpu` with two CPU tasks: one run of world size 2 in one folder."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=local_multi_gpu", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5", *TINY, "trainer.device=cpu",
           "trainer.max_steps=4", "eval.interval=4", "trainer.save_hf=false", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in DIST_VARS:
        env.pop(key, None)
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text()[-2000:] for p in sweep.glob(".submitit/*/*_log.err"))
    assert result.returncode == 0, result.stderr[-3000:] + logs
    (run_dir,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]  # both tasks, one folder
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["complete"]
    assert "rank 0 of 2" in (run_dir / "train.log").read_text()
    assert "rank 1 of 2" in (run_dir / "train.rank1.log").read_text()
    assert "rank 1 of 2" not in (run_dir / "train.log").read_text()

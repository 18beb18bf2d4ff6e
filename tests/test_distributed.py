"""Process groups from SLURM's variables alone (`srun cmae pretrain` without torchrun)."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from cmae.distributed import environment_from_slurm, first_host, init_distributed

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_launcher_variable(name: str) -> bool:
    """torchrun's and SLURM's own variables, which would leak into a test run inside a job."""
    return name in TORCHRUN_VARIABLES or name.startswith(("TORCHELASTIC", "SLURM_"))


@pytest.fixture
def bare_env(monkeypatch):
    """No launcher variables; whatever a test sets is undone afterwards."""
    for name in [name for name in os.environ if is_launcher_variable(name)]:
        monkeypatch.delenv(name)
    for name in TORCHRUN_VARIABLES:  # recorded (setenv), so what environment_from_slurm writes is undone
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    "nodelist,host",
    [
        ("node1", "node1"),
        ("node1,node2", "node1"),
        ("node[001-004,007]", "node001"),
        ("gpu-a[01-03],gpu-b5", "gpu-a01"),
        ("rack1-node[3,5-6]", "rack1-node3"),
        ("rack[2-3]-gpu[07-08],cpu1", "rack2-gpu07"),
    ],
)
def test_first_host_of_a_slurm_host_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["[1-2]", "node[a-b]", "node[]", "node[1-3", "", ",node1"])
def test_an_unreadable_host_list_is_named(nodelist):
    with pytest.raises(ValueError, match=r"SLURM_JOB_NODELIST="):
        first_host(nodelist)


def slurm(monkeypatch, procid="1", ntasks="4", localid="1", nodelist="gpu[03-04]", **more) -> None:
    monkeypatch.setenv("SLURM_PROCID", procid)
    monkeypatch.setenv("SLURM_NTASKS", ntasks)
    monkeypatch.setenv("SLURM_LOCALID", localid)
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    for name, value in more.items():
        monkeypatch.setenv(name, value)


def test_torchrun_variables_from_slurm_with_the_port_of_the_job(bare_env):
    slurm(bare_env, SLURM_JOB_ID="123456")
    environment_from_slurm()
    assert {name: os.environ[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu03",
        "MASTER_PORT": "23456",
    }


def test_master_port_and_address_given_and_the_step_nodes_preferred(bare_env):
    slurm(bare_env, SLURM_JOB_ID="7", SLURM_STEP_NODELIST="gpu[04]", MASTER_PORT="29511")
    environment_from_slurm()
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("gpu04", "29511")
    bare_env.delenv("WORLD_SIZE")
    bare_env.delenv("RANK")
    bare_env.setenv("MASTER_ADDR", "head")
    environment_from_slurm()
    assert os.environ["MASTER_ADDR"] == "head"


def test_torchrun_variables_win(bare_env):
    slurm(bare_env)
    bare_env.setenv("WORLD_SIZE", "2")
    bare_env.setenv("RANK", "0")
    environment_from_slurm()
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], "LOCAL_RANK" in os.environ) == ("2", "0", False)


def test_one_slurm_task_is_a_single_process(bare_env):
    slurm(bare_env, procid="0", ntasks="1", localid="0", nodelist="not[a-host-list")
    info = init_distributed(torch.device("cpu"))
    assert (info.rank, info.world_size, info.enabled) == (0, 1, False)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("SLURM_PROCID", "zero", "SLURM_PROCID='zero' is not an integer"),
        ("SLURM_NTASKS", "", "SLURM_NTASKS='' is not an integer"),
        ("SLURM_JOB_ID", "12_3", "SLURM_JOB_ID='12_3' is not an integer"),
        ("SLURM_PROCID", "4", "do not fit SLURM_NTASKS=4"),
    ],
)
def test_a_malformed_slurm_variable_is_named(bare_env, name, value, message):
    slurm(bare_env, SLURM_JOB_ID="1")
    bare_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        environment_from_slurm()


WORKER = """
import os, torch
from cmae.distributed import all_reduce_sum, cleanup, init_distributed
info = init_distributed(torch.device("cpu"))
rank = int(os.environ["SLURM_PROCID"])
assert (info.rank, info.world_size, info.local_rank) == (rank, 2, rank), info
total = all_reduce_sum(torch.tensor([rank + 1.0]))
print(float(total), flush=True)
cleanup()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_slurm_variables_alone_start_a_two_process_group():
    base = {name: value for name, value in os.environ.items() if not is_launcher_variable(name)}
    base.update(
        OMP_NUM_THREADS="1",
        SLURM_NTASKS="2",
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_ID="4242",
        MASTER_PORT=str(free_port()),
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            process.kill()  # a no-op for those that have exited
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    assert [out.split() for out, _ in outputs] == [["3.0"], ["3.0"]]  # 1 + 2 summed over the group

"""Process groups from SLURM's variables alone (`srun cmae pretrain` without torchrun)."""

import os
import random
import socket
import subprocess
import sys

import pytest

from cmae.distributed import first_host


@pytest.mark.parametrize("nodelist,host", [
    ("node1", "node1"), ("node1,node2", "node1"), ("node[001-004,007]", "node001"),
    ("gpu-a[01-03],gpu-b5", "gpu-a01"), ("rack1-node[3,5-6]", "rack1-node3")])
def test_first_host_of_a_slurm_host_list(nodelist, host):
    assert first_host(nodelist) == host


def test_an_unreadable_host_list_is_named():
    with pytest.raises(ValueError, match=r"SLURM_JOB_NODELIST='\[1-2\]'"):
        first_host("[1-2]")


WORKER = """
import torch
from cmae.distributed import all_reduce_sum, cleanup, init_distributed
info = init_distributed(torch.device("cpu"))
total = all_reduce_sum(torch.tensor([info.rank + 1.0]))
print(info.rank, info.world_size, info.local_rank, float(total), flush=True)
cleanup()
"""

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                      "MASTER_PORT")


def free_job_id() -> int:
    """A SLURM_JOB_ID whose port (20000 + id mod 20000) is free here."""
    for job in random.Random().sample(range(1_000_000, 2_000_000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 20000 + job % 20000))
                return job
            except OSError:
                continue
    raise RuntimeError("no free port in 20000-39999")


def test_slurm_variables_alone_start_a_two_process_group():
    base = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC")}
    job = free_job_id()
    processes = []
    for rank in range(2):
        env = {**base, "OMP_NUM_THREADS": "1", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2",
               "SLURM_LOCALID": str(rank), "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": str(job)}
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=60) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    # rank, world size, local rank, and the sum 1 + 2 over the group
    assert [out.split() for out, _ in outputs] == [["0", "2", "0", "3.0"], ["1", "2", "1", "3.0"]]


def test_a_malformed_slurm_variable_is_named():
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(SLURM_PROCID="zero", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_JOB_NODELIST="localhost")
    result = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SLURM_PROCID='zero' is not an integer" in result.stderr

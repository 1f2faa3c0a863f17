"""DDP as users launch it: ``torchrun`` on 2 "nodes" of localhost, failing and hung ranks,
and devices this machine cannot give."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scetm_mnn as sm
from _ranks import ENV

WORKER = Path(__file__).with_name("ddp_launch_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(out: Path) -> list[str]:
    """Processes still running the worker on ``out``."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(WORKER) in line and str(out) in line]


def test_two_nodes_under_torchrun(tmp_path):
    """Two torchrun agents (node ranks 0 and 1, one process each) train one model."""
    port = _port()
    command = [str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", "--master-addr=127.0.0.1"]
    command += [f"--master-port={port}"]
    worker = [str(WORKER), str(tmp_path), "1", "2"]
    nodes = [
        subprocess.Popen(
            [*command, f"--node-rank={rank}", *worker],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["node_rank"] for r in ranks] == [0, 1]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3 * -(-200 // 32)  # each node half
    assert ranks[0]["latent_sum"] == ranks[1]["latent_sum"]
    assert ranks[0]["history_rows"] == 3 and ranks[1]["history_rows"] == 0  # rank 0 logs
    assert (tmp_path / "model" / "model.pt").exists()


@pytest.mark.parametrize("how", ["raise", "hang"])
def test_a_failing_rank_ends_every_rank(tmp_path, how):
    """Rank 1 raises (or hangs outside any collective) in its third step."""
    import ddp_launch_worker

    tic = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), "2", "1", how, "1"],
        env=ENV, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    seconds = time.perf_counter() - tic
    assert done.returncode != 0
    # rank 0 times out, says so and ends rank 1 (Lightning's watcher then ends rank 0)
    expected = "fails on purpose" if how == "raise" else r"failed on rank 0 .*(?i:time(d )?out)"
    assert re.search(expected, done.stderr), done.stderr[-2000:]
    assert seconds < ddp_launch_worker.TIMEOUT_S + 60  # start-up, then at most the timeout
    time.sleep(1)
    assert _alive(tmp_path) == []  # no rank is left behind
    assert not list(tmp_path.glob("rank*.json"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accelerator": "cpu", "devices": 10_000}, "CPU cores available"),
        ({"accelerator": "gpu"}, "no CUDA GPU here"),
        ({"accelerator": "mps", "devices": 2}, "runs one process"),
    ],
)
def test_devices_this_machine_cannot_give_are_refused(kwargs, message):
    adata = sm.datasets.simulate(n_cells=60, n_genes=20, random_state=0)
    sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = sm.model.BatchCorrectedSCETM(adata, n_topics=3, n_emb=4)
    with pytest.raises(ValueError, match=message):
        model.train(max_epochs=1, strategy="ddp", **kwargs)


def test_ddp_strategy_settings_and_refusals():
    strategy = sm.train.ddp_strategy("ddp_spawn", timeout=42)
    assert strategy._timeout.total_seconds() == 42 and strategy._start_method == "spawn"
    assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True
    with pytest.raises(ValueError, match="not a DDP strategy"):
        sm.train.ddp_strategy("fsdp")
    with pytest.raises(ValueError, match="timeout must be > 0"):
        sm.train.ddp_strategy(timeout=0)
    kwargs = sm.train.parallel_trainer_kwargs({"strategy": "ddp", "callbacks": []})
    assert isinstance(kwargs["strategy"], type(strategy))
    assert [type(p).__name__ for p in kwargs["plugins"]] == ["SyncRanks"]
    assert [type(c).__name__ for c in kwargs["callbacks"]] == ["EndRanksOnError"]
    mine = sm.train.parallel_trainer_kwargs({"sync_batchnorm": True})
    assert "plugins" not in mine  # the caller's choice stands

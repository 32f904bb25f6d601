"""Several machines, simulated by two torchrun agents on this one (`--nnodes 2`, a worker each):
the workers refuse to train different recipes, a frozen peer stops the run within
`[train] peer_timeout` with one line, and a worker does not outlive its agent."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import tiny_char_recipe
from processes import ENV, finish


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agents(recipe: Path, out: Path, *per_node: list[str]) -> list[subprocess.Popen]:
    """One torchrun agent per node (rank 0, rank 1), each given its own extra arguments."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                              "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                              "-m", "seqmodel", "run", str(recipe), "--out", str(out), "--no-progress", *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
            for rank, extra in enumerate(per_node)]


def family(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        me = psutil.Process(proc.pid)
        return [me, *me.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise AssertionError(f"{path} never appeared:\n" + "\n".join(p.communicate()[1][-2000:] for p in procs))
        time.sleep(0.1)


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_machines_started_with_different_recipes_refuse_to_train(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, checkpoint_every=2)
    procs = agents(recipe, tmp_path / "run", ["--set", "train.lr=0.01"], ["--set", "train.lr=0.02"])
    try:
        results = [finish(p, timeout=120) for p in procs]
    finally:
        kill_all([q for p in procs for q in family(p)])
    for code, err in results:
        assert code != 0, err
        lines = error_lines(err)
        assert len(lines) == 1, err
        assert "recipe.train.lr is 0.01 on rank 0, 0.02 on rank 1" in lines[0], lines[0]
        assert "seqmodel/training" not in err, err  # no worker traceback
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_frozen_machine_stops_the_run_within_peer_timeout(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=100000, eval_every=100000, checkpoint_every=5, peer_timeout=3)
    procs = agents(recipe, tmp_path / "run", [], [])
    frozen = []
    try:
        wait_for(tmp_path / "run" / "checkpoints" / "latest", procs)
        frozen = family(procs[1])
        for p in frozen:
            p.suspend()  # SIGSTOP: the machine hangs, its sockets stay open
        stopped = time.monotonic()
        code, err = finish(procs[0], timeout=60)
        waited = time.monotonic() - stopped
    finally:
        kill_all(frozen + [q for p in procs for q in family(p)])
    assert code != 0 and waited < 3 + 20, (waited, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "lost another process of the run: no answer within [train] peer_timeout = 3 s" in lines[0], lines[0]
    assert "--resume" in lines[0] and "seqmodel/training" not in err, err


def test_a_worker_whose_agent_is_killed_stops_with_a_checkpoint(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=100000, eval_every=100000, checkpoint_every=1000, peer_timeout=20)
    procs = agents(recipe, tmp_path / "run", [], [])
    started = []
    try:
        wait_for(tmp_path / "run" / "metrics.jsonl", procs)
        started = [q for p in procs for q in family(p)]
        orphans = family(procs[1])[1:]
        assert orphans, "node 1 has no worker"
        procs[1].send_signal(signal.SIGKILL)  # the agent dies; nothing forwards a signal to its worker
        _, alive = psutil.wait_procs(orphans, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
        code, err = finish(procs[0], timeout=60)
    finally:
        kill_all(started)
    assert code != 0
    assert "interrupted at step" in err and "checkpoint saved" in err, err  # every worker agreed to stop
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_killing_the_launcher_leaves_no_worker(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=100000, eval_every=100000, checkpoint_every=1000)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "seqmodel", "run", str(recipe), "--out", str(out), "--no-progress",
                             "--num-processes", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    workers = []
    try:
        wait_for(out / "metrics.jsonl", [proc])
        workers = family(proc)[1:]
        assert len(workers) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # not communicate(): a surviving worker would hold its stderr open
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        kill_all(workers)
    assert (out / "checkpoints" / "latest").is_file(), proc.stderr.read()[-3000:]  # they stopped as on Ctrl-C: with a checkpoint


def test_only_the_errors_of_a_lost_peer_become_one_line(tmp_path):
    from seqmodel.training import peers

    gone = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242")
    waited = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to complete")
    assert "its connection closed" in str(peers.lost(gone, 3, tmp_path))
    assert "no answer within [train] peer_timeout = 3 s (1800 s before the first step)" in str(peers.lost(waited, 3, tmp_path))
    assert "no checkpoint was written" in str(peers.lost(waited, 3, tmp_path))
    assert peers.lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 3, tmp_path) is None


def test_a_repeated_hangup_asks_for_the_checkpoint_but_a_second_ctrl_c_stops_at_once():
    """The kernel sends the parent-death signal once per exiting thread of the dead agent: were it
    SIGTERM, the repeat would read as a second Ctrl-C and skip the checkpoint (what made workers
    of a SIGKILLed launcher exit without one, about half the time)."""
    import os

    from seqmodel.training.train import Interrupt

    with Interrupt() as interrupt:
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGHUP)
        assert interrupt.hit
    with Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.hit
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)

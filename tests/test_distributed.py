"""torch.distributed on CPU (gloo, 2 processes): sharded work equals one process; torchrun CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from robustlab import distributed
from robustlab.attacks.adversarial_set import generate_set, load_set, save_set
from robustlab.data import load_dataset
from robustlab.experiments.executor import run_spec
from robustlab.experiments.spec import load_spec
from robustlab.models.base import predict
from robustlab.runs import load, read_meta
from tests.files import without_timing

TINY = Path(__file__).parent / "specs" / "tiny.toml"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Compute the single-process reference with one thread, as each worker does: kernels may
    split float32 reductions by thread count, and the comparisons below are exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, run: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = distributed.my_batches(10, 3)  # batches 0 and 2, or 1 and 3
        assert mine == [(0, 3), (6, 9)] if rank == 0 else [(3, 6), (9, 10)]
        pieces = [torch.arange(s, e) for s, e in mine]
        assert distributed.in_batch_order(pieces, 10, 3).tolist() == list(range(10))
        # one batch for two processes: rank 1 computes it only as a probe of the shape
        assert distributed.my_batches(2, 3) == [(0, 2)]
        pieces = [torch.arange(s, e) * 2 for s, e in distributed.my_batches(2, 3)]
        assert distributed.in_batch_order(pieces, 2, 3).tolist() == [0, 2]
        model = load(run)
        data = load_dataset("digits", "test")
        indices = torch.arange(45).numpy()
        params = {"eps": 16 / 255, "step": 4 / 255, "steps": 3, "random_start": True}
        adv_set = generate_set(
            model, data, indices, "pgd", params, seed=7, batch_size=8, quiet=True
        )
        save_set(Path(out) / "sharded.npz", adv_set)  # rank 0 writes, rank 1 waits
        x, _ = data.subset(indices).tensors()
        labels = predict(model, x)
        assert labels.tolist() == model(x).argmax(1).tolist()
    finally:
        dist.destroy_process_group()


def test_sharded_attack_set_equals_single_process(digits_run: Path, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(digits_run), str(tmp_path)), nprocs=2)
    sharded = load_set(tmp_path / "sharded.npz")
    data = load_dataset("digits", "test")
    params = {"eps": 16 / 255, "step": 4 / 255, "steps": 3, "random_start": True}
    with one_thread():
        single = generate_set(
            load(digits_run),
            data,
            torch.arange(45).numpy(),
            "pgd",
            params,
            seed=7,
            batch_size=8,
            quiet=True,
        )
    assert (sharded.images == single.images).all()
    assert (sharded.adv_pred == single.adv_pred).all()
    assert (sharded.clean_pred == single.clean_pred).all()


def _torchrun(*args: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "robustlab",
        *args,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _kill_processes_mentioning(text: str) -> None:
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="ignore")
            if proc.name.isdigit() and text in command:
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def test_torchrun_training_writes_one_run_and_resumes_after_a_kill(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "lenet",
        "--width",
        "8",
        "--pad",
        "0",
        "--train-limit",
        "600",
        "--batch-size",
        "32",
        "--out",
        str(run),
    ]
    process = subprocess.Popen(
        _torchrun(*args, "--epochs", "40", port=_free_port()),
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (run / "meta.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    # kill -9 the launcher and both workers (torchrun gives workers their own sessions)
    os.killpg(process.pid, signal.SIGKILL)
    _kill_processes_mentioning(str(run))
    process.wait()
    assert (run / "meta.json").exists(), "no checkpoint was written in time"
    epochs_done = read_meta(run)["epoch"]  # meta.json is whole: written atomically by rank 0
    assert 1 <= epochs_done < 40
    load(run, allow_incomplete=True)
    target = str(epochs_done + 2)
    done = subprocess.run(
        _torchrun(*args, "--epochs", target, "--resume", port=_free_port()),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    meta = read_meta(run)
    assert meta["epoch"] == epochs_done + 2 and meta["complete"]
    assert [h["epoch"] for h in meta["history"]] == list(range(1, epochs_done + 3))
    load(run)


def test_spec_under_torchrun_gives_the_single_process_numbers(tmp_path: Path) -> None:
    single = tmp_path / "single"
    with one_thread():  # the torchrun workers run with OMP_NUM_THREADS=1
        records = run_spec(load_spec(TINY), single, device="cpu", quiet=True)
    sharded = tmp_path / "sharded"
    shutil.copytree(single / "runs", sharded / "runs")  # same models; attacks and evals sharded
    done = subprocess.run(
        _torchrun(
            "run", str(TINY), "--out", str(sharded), "--quiet", "--device", "cpu", port=_free_port()
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((sharded / "results.json").read_text())["records"]
    assert without_timing(again) == without_timing(records)

"""Sharing figures, in one run: `segshards publish` next to `aws s3 cp --recursive` of the same folder to a
loopback moto S3 server, and a build on a 2-worker local dask cluster next to the default joblib backend."""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3

from bench.commands import grid_build, segshards, timed

OUT = Path("bench-out/publish")
BIN = Path(sys.executable).parent
BUCKET = "segshards-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port}")


def start(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def publish_figures(folder: Path, rounds: int) -> None:
    """Best-of-`rounds` throughput of both uploaders on the same folder, alternating who goes first."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    aws = BIN / "aws"
    moto = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
    try:
        wait_listening(port)
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        ours: list[float] = []
        theirs: list[float] = []
        for r in range(rounds):
            jobs = [
                lambda r=r: ours.append(
                    timed(segshards("publish", str(folder), f"s3://{BUCKET}/ours-{r}"), env)
                ),
                lambda r=r: theirs.append(
                    timed(
                        [
                            str(aws),
                            "s3",
                            "cp",
                            "--recursive",
                            "--quiet",
                            str(folder),
                            f"s3://{BUCKET}/aws-{r}",
                        ],
                        env,
                    )
                ),
            ]
            if not aws.exists():
                jobs.pop()
            for job in jobs if r % 2 == 0 else reversed(jobs):
                job()
        resume = timed(segshards("publish", str(folder), f"s3://{BUCKET}/ours-0"), env)
    finally:
        stop([moto])
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != "build-log.json") / 1e6
    files = sum(1 for p in folder.iterdir() if p.is_file())
    print(f"publish to loopback moto S3: {size:,.1f} MB in {files} files, best of {rounds}")
    print(f"  segshards publish        : {min(ours):6.2f} s  {size / min(ours):7.1f} MB/s")
    if theirs:
        print(f"  aws s3 cp --recursive    : {min(theirs):6.2f} s  {size / min(theirs):7.1f} MB/s")
        print(f"  segshards / aws          : {min(theirs) / min(ours):.2f}x throughput")
    else:
        print("  aws s3 cp --recursive    : awscli not installed in this environment, skipped")
    print(f"  publish again (all in place, nothing sent): {resume:.2f} s")


def dask_figures(n: int, shard_size: int, rounds: int) -> None:
    """Best-of-`rounds` wall time of the same build with the default joblib backend on all cores and on a
    2-worker dask cluster on this machine (alternating which goes first); checks the outputs are identical."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(BIN / "dask")
    procs = [start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])]
    try:
        wait_listening(port)
        for _ in range(2):
            procs.append(
                start([dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"])
            )
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        size = ("--shard-size", str(shard_size))
        outs = {name: OUT / f"build-{name}" for name in ("joblib", "dask")}
        commands = {
            "joblib": grid_build(outs["joblib"], n, *size, "--jobs", "0"),
            "dask": grid_build(outs["dask"], n, *size, "--backend", "dask", "--scheduler", address),
        }
        times: dict[str, list[float]] = {"joblib": [], "dask": []}
        for r in range(rounds):
            for name in ("joblib", "dask") if r % 2 == 0 else ("dask", "joblib"):
                shutil.rmtree(outs[name], ignore_errors=True)
                times[name].append(timed(commands[name]))
        t_joblib, t_dask = min(times["joblib"]), min(times["dask"])
    finally:
        stop(procs)
    # The card names its set's own location (its snippets load from there): everything else must match.
    same = all(
        (outs["joblib"] / p.name).read_bytes() == p.read_bytes()
        for p in outs["dask"].iterdir()
        if p.name not in ("build-log.json", "README.md")
    )
    cores = os.cpu_count() or 1
    print(f"build mnist-grid {n:,} train samples, shards of {shard_size:,}, best of {rounds}")
    print(f"  joblib loky, --jobs 0 ({cores} cores) : {t_joblib:6.2f} s  {n / t_joblib:9,.0f} samples/s")
    print(f"  dask, 2 local workers x 1 thread : {t_dask:6.2f} s  {n / t_dask:9,.0f} samples/s")
    print(
        f"  dask / joblib                    : {t_joblib / t_dask:.2f}x speed; outputs byte-identical (card aside): {same}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench publish_bench")
    parser.add_argument(
        "--publish-samples", type=int, default=100_000, help="mnist-grid samples in the published set"
    )
    parser.add_argument("--publish-shard-size", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--build-samples", type=int, default=100_000, help="mnist-grid samples per build")
    args, _ = parser.parse_known_args(argv)
    shutil.rmtree(OUT, ignore_errors=True)
    folder = OUT / "set"
    n, k = args.publish_samples, args.publish_shard_size
    timed(grid_build(folder, n, "--shard-size", str(k)))
    publish_figures(folder, args.rounds)
    dask_figures(args.build_samples, 5_000, args.rounds)
    shutil.rmtree(OUT, ignore_errors=True)


if __name__ == "__main__":
    main()

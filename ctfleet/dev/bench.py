"""``make bench``: speed as ratios to a baseline measured in the same run.

Baselines (the floor any DICOM pipeline pays):

- ``read``: pydicom merely reading every file of the series (``dcmread``);
- ``read_hu``: pydicom reading every file into one float32 HU volume
  (``dcmread`` + ``pixel_array`` * slope + intercept, stacked).

Measured on the real chest CT (141 slices, ../shared/data) and on a 400-slice
study made from it (resampled along z, written as DICOM):

- ingest: ``prepare_study`` (read, validate, choose, de-identify, re-encode) / read;
- the whole ``ctfleet analyze`` command, process start-up and imports included / read_hu;
- warm analysis inside a running process (as the worker runs it) / read_hu,
  both ``analyze`` alone and the worker's path (volume + analyze + render);
- the analyzer's peak memory on its device during one ``analyze``, in a fresh
  process: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak
  resident set (``VmHWM``, reset once the series is read) above what was
  resident before the call (the input volume is not counted on either).

Each figure is the median of ``--repeat`` runs after one warm-up, so the OS
page cache is warm for the baseline and the measured code alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "ct00.tar.xz"


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: page cache, lazy imports, allocator
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def unpack_real_ct(archive: Path, cache: Path) -> Path:
    series = cache / "ct00" / "00"
    if len(list(series.glob("*.dcm"))) != 141:
        (cache / "ct00").mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(cache / "ct00", filter="data")
    return series


def make_400_slice_study(real: Path, out: Path) -> Path:
    """The real CT resampled along z to 400 slices (linear), written as a DICOM series."""
    from ctfleet.dev.synthetic import series_to_datasets
    from ctfleet.intake import dataset_to_bytes
    from ctfleet.intake.files import load_study

    if len(list(out.glob("*.dcm"))) == 400:
        return out
    out.mkdir(parents=True, exist_ok=True)
    volume = load_study(real).volume
    z = volume.shape[0]
    positions = np.linspace(0, z - 1, 400)
    lo = np.floor(positions).astype(int)
    hi = np.minimum(lo + 1, z - 1)
    w = (positions - lo)[:, None, None].astype(np.float32)
    hu = volume.hu[lo] * (1 - w) + volume.hu[hi] * w
    spacing = (volume.spacing_mm[0] * (z - 1) / 399, volume.spacing_mm[1], volume.spacing_mm[2])
    for i, ds in enumerate(series_to_datasets(np.round(hu), spacing, patient_name="BENCH^FOUR HUNDRED")):
        (out / f"IM{i:04d}.dcm").write_bytes(dataset_to_bytes(ds))
    return out


_PEAK_SCRIPT = """
import gc, sys, torch
from pathlib import Path
from ctfleet.intake import read_dataset, volume_from_series
from model import analyze

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

volume = volume_from_series([read_dataset(p.read_bytes()) for p in sorted(Path(sys.argv[1]).glob("*.dcm"))])
gc.collect()
if sys.argv[2].startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    analyze(volume, sys.argv[2])
    print((torch.cuda.max_memory_allocated() - before) / 2**20)
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set (VmHWM) to what is resident now
    before = status("VmRSS:")
    analyze(volume, sys.argv[2])
    print(status("VmHWM:") - before)
"""


def peak_memory_mib(folder: Path, device: str) -> float:
    """Peak memory one ``analyze`` of the series in ``folder`` adds on ``device``, in MiB, in a fresh process.

    CUDA: ``torch.cuda.max_memory_allocated`` during the call. CPU: the peak resident set (VmHWM, reset
    once the series is read) above the resident set before the call.
    """
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(folder), device], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def baseline_read(files: list[Path]) -> None:
    import pydicom

    for p in files:
        pydicom.dcmread(p)


def baseline_read_hu(files: list[Path]) -> np.ndarray:
    import pydicom

    slices = []
    for p in files:
        ds = pydicom.dcmread(p)
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        slices.append(ds.pixel_array.astype(np.float32) * slope + intercept)
    return np.stack(slices)


def bench_series(label: str, folder: Path, repeat: int, device: str) -> dict[str, float | str]:
    from model import analyze

    from ctfleet.intake import read_dataset, volume_from_series
    from ctfleet.results.files import render
    from ctfleet.intake.prepare import prepare_study

    files = sorted(folder.glob("*.dcm"))
    t_read = median_time(lambda: baseline_read(files), repeat)
    t_read_hu = median_time(lambda: baseline_read_hu(files), repeat)
    secret = b"0" * 64

    def ingest() -> None:
        prepare_study([p.read_bytes() for p in files], secret=secret, facility="bench")

    t_ingest = median_time(ingest, repeat)

    def command() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "ctfleet", "analyze", str(folder), "--out", f"{tmp}/out",
                            "--device", device], check=True, capture_output=True)

    t_command = median_time(command, repeat)
    blobs = [p.read_bytes() for p in files]
    volume = volume_from_series([read_dataset(b) for b in blobs])
    t_analyze = median_time(lambda: analyze(volume, device), repeat)
    peak_mib = peak_memory_mib(folder, device)

    def worker_path() -> None:
        vol = volume_from_series([read_dataset(b) for b in blobs])
        render(analyze(vol, device), vol)

    t_worker = median_time(worker_path, repeat)
    return {
        "series": label, "slices": len(files), "device": device,
        "read_s": t_read, "read_hu_s": t_read_hu,
        "ingest_s": t_ingest, "ingest_x_read": t_ingest / t_read,
        "command_s": t_command, "command_x_read_hu": t_command / t_read_hu,
        "warm_analyze_s": t_analyze, "warm_analyze_x_read_hu": t_analyze / t_read_hu,
        "warm_worker_s": t_worker, "warm_worker_x_read_hu": t_worker / t_read_hu,
        "peak_mib": peak_mib, "shape": "×".join(str(n) for n in volume.shape),
    }


def table(rows: list[dict[str, float | str]]) -> str:
    lines = [
        "| series | slices | device | pydicom read | read → HU | ingest (× read) | `ctfleet analyze` (× read→HU) "
        "| warm analyze (× read→HU) | warm worker path (× read→HU) | analyzer's peak memory on the device |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['series']} | {r['slices']} | {r['device']} | {r['read_s']:.2f} s | {r['read_hu_s']:.2f} s "
            f"| {r['ingest_s']:.2f} s ({r['ingest_x_read']:.1f}×) | {r['command_s']:.2f} s ({r['command_x_read_hu']:.1f}×) "
            f"| {r['warm_analyze_s']:.2f} s ({r['warm_analyze_x_read_hu']:.1f}×) "
            f"| {r['warm_worker_s']:.2f} s ({r['warm_worker_x_read_hu']:.1f}×) "
            f"| {r['peak_mib']:.0f} MiB ({r['shape']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctfleet.dev.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--cache", type=Path, default=Path(os.path.expanduser("~/.cache/ctfleet-bench")))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--no-fleet", action="store_true", help="skip the fleet's figures (local stack, ~8 min)")
    parser.add_argument("--no-backfill", action="store_true", help="skip the backfill's figures (local stack, ~5 min)")
    args = parser.parse_args(argv)
    import torch

    from ctfleet.logs import silence_header_values

    silence_header_values()
    if not args.archive.exists():
        print(f"error: no_input: the real CT archive is missing at {args.archive}", file=sys.stderr)
        return 2
    real = unpack_real_ct(args.archive, args.cache)
    big = make_400_slice_study(real, args.cache / "ct400")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for label, folder in (("real CT", real), ("400-slice", big)):
            print(f"bench: {label} on {device} ...", file=sys.stderr)
            rows.append(bench_series(label, folder, args.repeat, device))
    text = table(rows)
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}; medians of {args.repeat} runs after a warm-up.\n\n")
    if not args.no_fleet:
        from ctfleet.dev import fleet_bench

        text += "\n\n## The fleet\n\n" + (fleet_bench.__doc__ or "").split("\n\n", 1)[1] + "\n" + fleet_bench.main()
    if not args.no_backfill:
        from ctfleet.dev import backfill_bench

        text += ("\n\n## The backfill\n\n" + (backfill_bench.__doc__ or "").split("\n\n", 1)[1] + "\n"
                 + backfill_bench.main())
    print(header + text, file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmarks\n\n" + (__doc__ or "") + "\n" + header + text + "\n")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

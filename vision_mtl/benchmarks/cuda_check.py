"""One prepared check of every CUDA path, for the rare minutes a GPU machine is lent.

Each step (the CUDA tests, the device benchmarks, an fp16 + PCGrad training smoke, ONNX export
and inference, nccl) runs as its own subprocess with its own timeout, inside one overall budget;
a failing, timed-out or skipped step is recorded and the next one starts. ``dry_run`` builds the
same steps and only checks they would start (files present, ``--help`` and ``--collect-only``
succeed), so a broken command shows on a CPU long before a GPU is lent. Both write
``check_cuda_report.md`` and ``check_cuda_report.json``; each step's output is in ``logs/``.

The probes the steps call (``env``, ``nccl``) run as ``python -m vision_mtl.benchmarks.cuda_check``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vision_mtl.config import load_config
from vision_mtl.errors import VisionMTLError, first_line

REPO_ROOT = Path(__file__).resolve().parents[2]
COCO128 = REPO_ROOT.parent / "shared" / "datasets" / "coco128"
PASSED, FAILED, TIMEOUT, SKIPPED, DRY_OK, DRY_FAILED = ("passed", "failed", "timeout", "skipped", "dry-run ok",
                                                        "dry-run failed")
MIN_STEP_S = 10  # a step is not started with less of the budget left
MD_FIGURES = 8  # key figures per step in the Markdown table (the JSON has all)
LOG_TAIL = 15  # lines of a failed step's output quoted in the Markdown report
# "  name   1.234" lines the benchmarks and the trainer print
FIGURE = re.compile(r"^\s{2}(\S.*?)\s{2,}(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*$")
# a row of benchmark.py infer's table: candidate, model s, pipeline s, pipeline images/s, ...
INFER_ROW = re.compile(r"^\s{2}(\S.*?)\s+\d+\.\d+\s+\d+\.\d+\s+(\d+\.\d+)(?:\s+\d+\.\d+){3}\s*$")
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def named_figures(output: str) -> dict[str, object]:
    """The ``  name   value`` lines of a benchmark's or the trainer's output, as a dict."""
    return {m[1]: float(m[2]) for m in map(FIGURE.match, output.splitlines()) if m}


def pytest_figures(output: str) -> dict[str, object]:
    """Counts from pytest's last summary line (passed, failed, skipped, errors; collected when only collecting)."""
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    counts: dict[str, object] = {word.rstrip("s") if word.startswith("error") else word: int(n)
                                 for n, word in PYTEST_COUNT.findall(last)}
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", last)
    if collected:
        counts["collected"] = int(collected[1])
    return counts


def infer_figures(output: str) -> dict[str, object]:
    """Pipeline images/s of each candidate in ``benchmark.py infer``'s table."""
    rows = (INFER_ROW.match(line) for line in output.splitlines())
    return {f"{m[1]} pipeline images/s": float(m[2]) for m in rows if m}


def json_figures(output: str) -> dict[str, object]:
    """The JSON object a probe prints on its last line."""
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


@dataclass
class Step:
    """One subprocess of the check: ``argv`` (plus ``extra[name]`` when step ``name`` passed) with a
    ``timeout``; started only once every step in ``needs`` passed. ``dry_check`` is what a dry run
    executes instead, after checking ``files`` exist and ``config`` (a YAML file and overrides) loads;
    ``figures`` reads the key figures from the output."""

    name: str
    what: str
    argv: list[str]
    timeout: float
    dry_check: list[str]
    files: list[Path] = field(default_factory=list)
    config: tuple[Path, list[str]] | None = None
    needs: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)
    figures: Callable[[str], dict[str, object]] = named_figures

    def command(self, passed: set[str]) -> list[str]:
        return [*self.argv, *(arg for name, args in self.extra.items() if name in passed for arg in args)]


@dataclass
class Outcome:
    """What one step did: status, seconds, key figures, the command and a note (why it failed or was skipped)."""

    name: str
    what: str
    status: str
    seconds: float
    command: str
    figures: dict[str, object] = field(default_factory=dict)
    note: str = ""
    log_tail: list[str] = field(default_factory=list)


def build_steps(out: Path) -> list[Step]:
    """The check's steps, in order of value (the budget may not reach the last ones); scratch under ``out/work``."""
    work, python = out / "work", sys.executable
    tool = lambda name: REPO_ROOT / "tools" / name  # noqa: E731
    help_of = lambda name: [python, str(tool(name)), "--help"]  # noqa: E731
    shapes_yaml = REPO_ROOT / "configs" / "shapes.yaml"
    shapes = [f"data.root={work / 'shapes'}", "data.synthetic_train_images=64", "data.synthetic_val_images=16"]
    # augment --decode reads JPEGs from a config's training files: coco128's photos where present
    jpegs = (REPO_ROOT / "configs" / "coco128.yaml", []) if COCO128.is_dir() else (shapes_yaml, shapes)
    train = [*shapes, "train.device=cuda", "train.amp=fp16", "mtl.balancer=pcgrad", "train.epochs=1",
             "train.max_steps_per_epoch=8", "train.plots=false", f"run.dir={work / 'runs'}", "run.name=smoke"]
    engine = lambda balancer: [*shapes, "train.device=cuda", f"mtl.balancer={balancer}"]  # noqa: E731
    augment = [*jpegs[1], "train.device=cuda"]
    checkpoint, onnx, half = work / "runs" / "smoke" / "best.pt", work / "model.onnx", work / "model-half.onnx"
    probe = [python, "-m", "vision_mtl.benchmarks.cuda_check"]
    torchrun = [python, "-m", "torch.distributed.run"]
    pytest = [python, "-m", "pytest", "-p", "no:cacheprovider", "-k", "cuda and not check_cuda"]
    tests = [str(path) for path in cuda_test_files()]
    benchmark = [python, str(tool("benchmark.py"))]
    export = [python, str(tool("export_onnx.py")), "--weights", str(checkpoint), "--force", "--out"]
    return [
        Step("environment", "GPU, driver, CUDA, versions, onnxruntime providers, CPU", [*probe, "env"], 60,
             [*probe, "env"], figures=json_figures),
        Step("nccl", "one-process torch.distributed group, backend nccl: all_reduce + barrier", [*probe, "nccl"], 45,
             [*probe, "--help"], figures=json_figures),
        Step("torchrun nccl", "the same probe under torchrun --standalone --nproc_per_node 1",
             [*torchrun, "--standalone", "--nproc_per_node", "1", "-m", "vision_mtl.benchmarks.cuda_check", "nccl"],
             45, [*torchrun, "--help"], figures=json_figures),
        Step("cuda tests", "pytest -k cuda: the tests parametrised or skipped on CUDA",
             [*pytest, "-q", "-rfEs", *tests], 120, [*pytest, "-q", "--collect-only", *tests], figures=pytest_figures),
        Step("train fp16 pcgrad", "tools/train.py: 1 epoch of 8 steps, train.amp=fp16, mtl.balancer=pcgrad",
             [python, str(tool("train.py")), "--config", str(shapes_yaml), *train], 90, help_of("train.py"),
             files=[tool("train.py")], config=(shapes_yaml, train)),
        Step("augment decode", "benchmark.py augment --decode: nvJPEG + kornia vs albumentations workers",
             [*benchmark, "augment", "--decode", "--imgsz", "320", "--batch", "16", "--rounds", "3",
              "--config", str(jpegs[0]), *augment], 75, help_of("benchmark.py"), files=[tool("benchmark.py")],
             config=(jpegs[0], augment)),
        Step("engine pcgrad", "benchmark.py engine, mtl.balancer=pcgrad: fp32, bf16, fp16 trainer steps",
             [*benchmark, "engine", "--rounds", "3", *engine("pcgrad")], 75, help_of("benchmark.py"),
             files=[tool("benchmark.py")], config=(shapes_yaml, engine("pcgrad"))),
        Step("export onnx", "tools/export_onnx.py of the smoke's best.pt, checked against PyTorch",
             [*export, str(onnx)], 90, help_of("export_onnx.py"), files=[tool("export_onnx.py")],
             needs=("train fp16 pcgrad",)),
        Step("export onnx --half", "the same export in float16", [*export, str(half), "--half"], 90,
             help_of("export_onnx.py"), files=[tool("export_onnx.py")], needs=("train fp16 pcgrad",)),
        Step("infer", "benchmark.py infer: checkpoint fp32/bf16 and the ONNX exports in onnxruntime",
             [*benchmark, "infer", "--weights", str(checkpoint), "--images", "128", "--rounds", "2",
              "--onnx", str(onnx)], 75, help_of("benchmark.py"), files=[tool("benchmark.py")],
             needs=("train fp16 pcgrad", "export onnx"), extra={"export onnx --half": [str(half)]},
             figures=infer_figures),
        Step("engine uncertainty", "benchmark.py engine, mtl.balancer=uncertainty (a loss balancer)",
             [*benchmark, "engine", "--rounds", "3", *engine("uncertainty")], 60, help_of("benchmark.py"),
             files=[tool("benchmark.py")], config=(shapes_yaml, engine("uncertainty"))),
    ]


def cuda_test_files() -> list[Path]:
    """The test files that mention CUDA (collecting only these is much faster than the whole suite);
    this check's own tests excluded."""
    return [path for path in sorted((REPO_ROOT / "tests").glob("test_*.py"))
            if path.name != "test_check_cuda.py" and "cuda" in path.read_text().lower()]


def subprocess_env() -> dict[str, str]:
    """The environment of every step: this checkout first on the import path, unbuffered output."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def execute(argv: list[str], timeout: float, log: Path) -> tuple[int | None, str, float]:
    """Run ``argv`` from the repository root, its output written to ``log``; (exit code, or None when it
    timed out, output, seconds). On timeout its whole process group goes (loader workers, torchrun's children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as sink:
        sink.write(f"$ {subprocess.list2cmdline(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=subprocess_env(), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        except BaseException:  # Ctrl-C: the step's processes must not outlive the check
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        if code is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text(errors="replace").split("\n", 1)[1]
    return code, output, time.perf_counter() - start


def log_path(out: Path, name: str) -> Path:
    return out / "logs" / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.log"


def run_steps(steps: list[Step], out: Path, budget: float) -> list[Outcome]:
    """Run the steps in order within ``budget`` seconds; each gets at most its own timeout and what is left."""
    shutil.rmtree(out / "work", ignore_errors=True)
    deadline, passed, outcomes = time.monotonic() + budget, set(), []
    for step in steps:
        argv, left = step.command(passed), deadline - time.monotonic()
        missing = [name for name in step.needs if name not in passed]
        if missing or left < MIN_STEP_S:
            note = f"needs {', '.join(missing)}" if missing else f"budget spent ({left:.0f} s left)"
            outcomes.append(Outcome(step.name, step.what, SKIPPED, 0.0, shown(argv), note=note))
            continue
        code, output, seconds = execute(argv, min(step.timeout, left), log_path(out, step.name))
        status = PASSED if code == 0 else TIMEOUT if code is None else FAILED
        note = ("" if code == 0 else f"exit {code}" if code is not None
                else f"timed out after {min(step.timeout, left):.0f} s")
        tail = [] if code == 0 else output.splitlines()[-LOG_TAIL:]
        outcomes.append(Outcome(step.name, step.what, status, seconds, shown(argv),
                                figures=safe_figures(step, output), note=note, log_tail=tail))
        if code == 0:
            passed.add(step.name)
    return outcomes


def dry_run_steps(steps: list[Step], out: Path, timeout: float = 90) -> list[Outcome]:
    """Check each step would start: its files exist, its config loads and its ``dry_check`` exits 0
    (identical checks run once, in parallel)."""
    every = {step.name for step in steps}
    checks = {tuple(step.dry_check): step.name for step in reversed(steps)}  # each check logged under its first step
    run = lambda check: execute(list(check), timeout, log_path(out, "dry " + checks[check]))  # noqa: E731
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(checks, pool.map(run, checks)))
    outcomes = []
    for step in steps:
        code, output, seconds = results[tuple(step.dry_check)]
        missing = [str(path) for path in step.files if not path.exists()]
        unknown = [name for name in step.needs if name not in every]
        bad_config = config_error(step.config)
        ok = code == 0 and not missing and not unknown and not bad_config
        note = ("missing " + ", ".join(missing) if missing else "needs unknown step " + ", ".join(unknown) if unknown
                else bad_config if bad_config else f"checked: {shown(step.dry_check)}" if ok
                else f"{shown(step.dry_check)}: " + ("timed out" if code is None else f"exit {code}"))
        # the collected count and the environment; other checks print --help, no figures
        figures = safe_figures(step, output) if step.figures in (pytest_figures, json_figures) else {}
        outcomes.append(Outcome(step.name, step.what, DRY_OK if ok else DRY_FAILED, seconds,
                                shown(step.command(every)), figures=figures, note=note,
                                log_tail=[] if ok else output.splitlines()[-LOG_TAIL:]))
    return outcomes


def config_error(config: tuple[Path, list[str]] | None) -> str:
    """Why ``config`` (a YAML file and overrides) does not load, or "" when it does (or there is none)."""
    if config is None:
        return ""
    try:
        load_config(*config)
    except VisionMTLError as exc:
        return f"config {config[0].name}: {first_line(exc)}"
    return ""


def shown(argv: list[str]) -> str:
    """``argv`` as a command line to read: ``python`` for this interpreter, paths relative to the repository."""
    return subprocess.list2cmdline(["python" if arg == sys.executable else arg for arg in argv]).replace(
        f"{REPO_ROOT}{os.sep}", "")


def safe_figures(step: Step, output: str) -> dict[str, object]:
    """``step.figures`` of ``output``; an output the reader cannot parse gives none (the log keeps it)."""
    try:
        return step.figures(output)
    except ValueError:  # json.JSONDecodeError included
        return {}


def write_report(outcomes: list[Outcome], out: Path, dry_run: bool, seconds: float) -> tuple[Path, Path]:
    """``check_cuda_report.json`` and ``check_cuda_report.md`` in ``out``; the environment is the
    figures of the ``environment`` step."""
    out.mkdir(parents=True, exist_ok=True)
    env = next((o.figures for o in outcomes if o.name == "environment"), {})
    report = {"dry_run": dry_run, "seconds": round(seconds, 1),
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "environment": env,
              "steps": [vars(o) | {"seconds": round(o.seconds, 1)} for o in outcomes]}
    json_path, md_path = out / "check_cuda_report.json", out / "check_cuda_report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return md_path, json_path


def markdown(report: dict) -> str:
    """The human-readable report: environment, one table row per step, then failures' output tails and the commands."""
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    figures = lambda fig: "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"  # noqa: E731
                                    for k, v in list(fig.items())[:MD_FIGURES])
    title = "GPU check (dry run: commands checked, nothing measured)" if report["dry_run"] else "GPU check"
    lines = [f"# {title}", "", f"{report['date']}, {report['seconds']} s in all.", "", "## Environment", ""]
    lines += [f"- {key}: {value}" for key, value in report["environment"].items()] or ["- (none: see its step)"]
    lines += ["", "## Steps", "", "| step | status | seconds | key figures |", "|---|---|---:|---|"]
    for step in report["steps"]:
        own = step["figures"] if step["name"] != "environment" else {}  # the environment is listed above
        text = "; ".join(filter(None, [figures(own), step["note"]]))
        lines.append(f"| {cell(step['name'])} | {step['status']} | {step['seconds']:.1f} | {cell(text)} |")
    for step in (s for s in report["steps"] if s["log_tail"]):
        lines += ["", f"### {step['name']}: last lines of its output", "", "```", *step["log_tail"], "```"]
    lines += ["", "## Commands", ""]
    lines += [f"- {step['name']} ({step['what']}): `{step['command']}`" for step in report["steps"]]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, object]:
    """What the report records about the machine: GPU, driver and CUDA, versions, onnxruntime providers, CPU."""
    import kornia
    import onnxruntime
    import timm
    import torch
    import torch.distributed as dist
    import torchvision

    info: dict[str, object] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "kornia": kornia.__version__, "onnxruntime": onnxruntime.__version__,
        "onnxruntime providers": ", ".join(onnxruntime.get_available_providers()),
        "cpu": cpu_model(), "cpu cores": os.cpu_count(), "torch built with CUDA": torch.version.cuda or "no",
        "cuda available": torch.cuda.is_available(), "nccl available": dist.is_available() and dist.is_nccl_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu count": torch.cuda.device_count(),
                 "gpu memory GiB": round(props.total_memory / 2**30, 1),
                 "compute capability": f"{props.major}.{props.minor}", "driver": nvidia_driver(),
                 "cudnn": torch.backends.cudnn.version(), "bf16 supported": torch.cuda.is_bf16_supported(),
                 "nccl": nccl_version()}
    return info


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match[1].strip() if match else platform.processor() or "unknown"


def nvidia_driver() -> str:
    """The NVIDIA driver version as nvidia-smi reports it (torch does not expose it)."""
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def nccl_version() -> str:
    import torch

    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def probe_nccl() -> dict[str, object]:
    """A one-process nccl group on GPU ``LOCAL_RANK``: all_reduce of a CUDA tensor and a barrier.
    Under torchrun the group comes from its environment; alone, from a local TCP port."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    start = time.perf_counter()
    dist.init_process_group("nccl", device_id=device)
    try:
        tensor = torch.full((1024,), 2.0, device=device)
        dist.all_reduce(tensor)
        dist.barrier()
        torch.cuda.synchronize(device)
        return {"backend": dist.get_backend(), "world": dist.get_world_size(), "all_reduce sum": tensor[0].item(),
                "torchrun": "TORCHELASTIC_RUN_ID" in os.environ, "seconds": round(time.perf_counter() - start, 3)}
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description="probes of tools/check_cuda.py; each prints one JSON line")
    parser.add_argument("probe", choices=["env", "nccl"])
    args = parser.parse_args()
    print(json.dumps(environment() if args.probe == "env" else probe_nccl()))


if __name__ == "__main__":
    main()

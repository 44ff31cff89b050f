#!/usr/bin/env python3
"""The summary of `scripts/gpu-check.sh run`: reads the raw outputs the check left in one folder,
prints one Markdown table and writes it, with the figures as JSON, beside them.

    python3 scripts/gpu_summary.py RAW_DIR      (writes RAW_DIR/summary.md and summary.json)

What RAW_DIR holds (every file may be missing; a missing figure says why, from steps.tsv):
    steps.tsv                   a line per step: name, result (ok, failed..., skipped...,
                                not installed), seconds
    gpu.txt                     nvidia-smi's name, driver and memory line
    train/metrics.csv           handwritten's tf32 training run, replaying the step graph
    criterion/**/benchmark.json the step bench and the op bench (CRITERION_HOME)
    profile-nsys.csv            nsys's cuda_gpu_kern_sum report of a short training run, or
    profile-ncu.csv             ncu's gpu__time_duration of the same run's kernels
    pytorch-SETTING.log         tools/pytorch_baseline.py's output, one file per setting
Uses only Python's standard library.
"""

import csv
import io
import json
import os
import re
import sys

TARGET_ACCURACY = 0.99
STEP_VARIANTS = [("tf32", "graph"), ("tf32", "eager"), ("fp32", "graph"), ("fp32", "eager")]
# (file stem, what the row says, steps.tsv name)
PYTORCH_SETTINGS = [
    ("eager", "eager", "pytorch eager"),
    ("fused-adam", "eager, fused Adam", "pytorch fused-adam"),
    ("compile", 'torch.compile(mode="max-autotune"), fused Adam', "pytorch compile"),
    ("cuda-graph", "whole step as one CUDA graph, capturable fused Adam", "pytorch cuda-graph"),
]
SANITIZERS = ["memcheck", "racecheck", "synccheck"]
TIME_UNITS_NS = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}
TIME_UNITS_NS.update({"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9})


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_steps(raw):
    """steps.tsv as {name: (result, seconds)}, in the order the steps ran."""
    steps = {}
    for line in (read_text(os.path.join(raw, "steps.tsv")) or "").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            steps[fields[0]] = (fields[1], fields[2] if len(fields) > 2 else "")
    return steps


def why_missing(steps, name):
    """Why a step's figure is absent: its result if it did not pass, else that it printed none."""
    result = steps.get(name)
    if result is None:
        return "not run"
    if result[0] == "ok":
        return "not found in its output"
    return result[0]


def read_metrics(raw):
    """handwritten's metrics.csv rows as dicts of floats."""
    text = read_text(os.path.join(raw, "train", "metrics.csv"))
    if not text:
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            rows.append({key: float(value) for key, value in row.items()})
        except (TypeError, ValueError):
            break
    return rows


def time_to_accuracy(rows, target):
    """Cumulative training seconds at the first epoch whose test_acc reaches target, and that
    epoch; (None, epochs run) if none does."""
    total = 0.0
    for row in rows:
        total += row["seconds"]
        if row["test_acc"] >= target:
            return total, int(row["epoch"])
    return None, len(rows)


def read_criterion(raw):
    """{full bench id: (seconds per iteration, throughput dict or None)} from CRITERION_HOME."""
    benches = {}
    for folder, _, files in os.walk(os.path.join(raw, "criterion")):
        if os.path.basename(folder) != "new" or "benchmark.json" not in files:
            continue
        try:
            with open(os.path.join(folder, "benchmark.json")) as f:
                bench = json.load(f)
            with open(os.path.join(folder, "estimates.json")) as f:
                estimates = json.load(f)
        except (OSError, ValueError):
            continue
        # Criterion's own "time" figure: the slope of a linear sampling, else the mean.
        typical = estimates.get("slope") or estimates["mean"]
        benches[bench["full_id"]] = (typical["point_estimate"] * 1e-9, bench.get("throughput"))
    return benches


def csv_from_header(text, *needed):
    """The CSV rows of text from the first line naming every column in needed (tools print
    other lines before their CSV)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if all(name in line for name in needed):
            return list(csv.DictReader(lines[i:]))
    return []


def number(text):
    return float(text.replace(",", ""))


def read_nsys(text):
    """{kernel: total ns} from nsys's cuda_gpu_kern_sum (or older gpukernsum) CSV."""
    totals = {}
    for row in csv_from_header(text, "Total Time", "Name"):
        column = next((key for key in row if key and key.startswith("Total Time")), None)
        try:
            totals[row["Name"]] = totals.get(row["Name"], 0.0) + number(row[column])
        except (KeyError, TypeError, ValueError):
            continue
    return totals


def read_ncu(text):
    """{kernel: total ns} from ncu's --csv output of the gpu__time_duration.sum metric."""
    totals = {}
    for row in csv_from_header(text, "Kernel Name", "Metric Value"):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        try:
            ns = number(row["Metric Value"]) * TIME_UNITS_NS[row.get("Metric Unit", "nsecond")]
        except (KeyError, TypeError, ValueError):
            continue
        totals[row["Kernel Name"]] = totals.get(row["Kernel Name"], 0.0) + ns
    return totals


def kernel_shares(raw, steps, benches, step_seconds):
    """(how, rows of (kernel, share of the step, note)) from the profiler that ran, else from the
    op bench's times at batch 64 over the fp32 graph step time."""
    for tool, reader in (("nsys", read_nsys), ("ncu", read_ncu)):
        text = read_text(os.path.join(raw, f"profile-{tool}.csv"))
        totals = reader(text) if text else {}
        whole = sum(totals.values())
        if whole > 0:
            how = (
                f"{tool}: each kernel's GPU time over all kernels' in a short tf32 training run "
                "(graph replayed)"
            )
            rows = [
                (name, ns / whole, f"{ns / 1e6:.3f} ms in all")
                for name, ns in sorted(totals.items(), key=lambda item: -item[1])
            ]
            return how, rows
    step = step_seconds.get(("fp32", "graph"))
    ops = {
        full_id[len("cuda/") :]: (seconds, throughput)
        for full_id, (seconds, throughput) in benches.items()
        if full_id.startswith("cuda/") and not full_id.startswith("cuda/step/")
        and (full_id.endswith("/b64") or full_id.startswith("cuda/adam/"))
    }
    profiler = steps.get("profile", ("not run", ""))[0]
    if not ops or not step:
        return f"no profiler ({profiler}); op bench: {why_missing(steps, 'bench ops')}", []
    how = (
        f"op bench, no profiler ({profiler}): each op alone at batch 64 (fp32) over the fp32 "
        "graph step; the step fuses some of these ops, so the shares need not add up to 100%"
    )
    rows = []
    for name, (seconds, throughput) in sorted(ops.items(), key=lambda item: -item[1][0]):
        note = f"{seconds * 1e6:.1f} µs"
        if throughput and "Elements" in throughput:
            note += f", {throughput['Elements'] / seconds / 1e12:.2f} TFLOP/s"
        rows.append((name, seconds / step, note))
    return how, rows


def tests_result(steps, prefix, absent):
    """pass, or the failed and skipped test binaries, or why none ran (the result of the step
    named absent)."""
    runs = {name: result for name, (result, _) in steps.items() if name.startswith(prefix + " ")}
    if not runs:
        return why_missing(steps, absent)
    bad = [
        f"{name[len(prefix) + 1 :]}: {result}" for name, result in runs.items() if result != "ok"
    ]
    if not bad:
        return f"pass ({len(runs)} test binar{'y' if len(runs) == 1 else 'ies'})"
    failed = any(not result.startswith("skipped") for result in runs.values() if result != "ok")
    return ("FAIL: " if failed else "incomplete: ") + "; ".join(bad)


def read_pytorch(raw, stem):
    """The first epoch's seconds and test_acc, the warm-up seconds and the torch version."""
    text = read_text(os.path.join(raw, f"pytorch-{stem}.log"))
    if text is None:
        return None
    found = {}
    for key, pattern in (
        ("seconds", r"^seconds ([0-9.]+)"),
        ("test_acc", r"test_acc ([0-9.]+)"),
        ("warmup_seconds", r"^warmup_seconds ([0-9.]+)"),
        ("torch", r"^torch (\S+)"),
    ):
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            found[key] = match.group(1) if key == "torch" else float(match.group(1))
    return found


def summarize(raw):
    """The figures as a dict and the Markdown table."""
    steps = read_steps(raw)
    benches = read_criterion(raw)
    step_seconds = {}
    for precision, mode in STEP_VARIANTS:
        found = benches.get(f"cuda/step/train_b64_{precision}_{mode}")
        if found:
            step_seconds[(precision, mode)] = found[0]
    metrics = read_metrics(raw)
    reach_seconds, reach_epoch = time_to_accuracy(metrics, TARGET_ACCURACY)
    first = metrics[0] if metrics else None
    how, shares = kernel_shares(raw, steps, benches, step_seconds)
    pytorch = {stem: read_pytorch(raw, stem) for stem, _, _ in PYTORCH_SETTINGS}
    gpu = (read_text(os.path.join(raw, "gpu.txt")) or "").strip().splitlines()

    figures = {
        "gpu": gpu[-1] if gpu else None,
        "step_ms_b64": {f"{p}_{m}": s * 1e3 for (p, m), s in step_seconds.items()},
        "epoch1_seconds": first["seconds"] if first else None,
        "epoch1_test_acc": first["test_acc"] if first else None,
        "epochs_run": len(metrics),
        "seconds_to_test_acc_0.99": reach_seconds,
        "epoch_reaching_test_acc_0.99": reach_epoch if reach_seconds is not None else None,
        "kernel_shares_source": how,
        "kernel_shares": {name: share for name, share, _ in shares},
        "tests": tests_result(steps, "test", "tests"),
        "sanitizers": {tool: tests_result(steps, tool, "compute-sanitizer") for tool in SANITIZERS},
        "pytorch": pytorch,
        "steps": {name: {"result": r, "seconds": s} for name, (r, s) in steps.items()},
    }

    out = ["## GPU check summary", ""]
    if gpu:
        out += [f"GPU: {gpu[-1]}", ""]
    out += ["| measure | figure |", "| --- | --- |"]
    out.append(f"| tests on the GPU | {figures['tests']} |")
    for precision, mode in STEP_VARIANTS:
        seconds = step_seconds.get((precision, mode))
        figure = f"{seconds * 1e3:.3f} ms" if seconds else why_missing(steps, "bench step")
        out.append(f"| training step, batch 64, {precision}, {mode} | {figure} |")
    if first:
        out.append(f"| epoch 1 training time (tf32, graph) | {first['seconds']:.3f} s |")
        out.append(f"| test_acc after epoch 1 | {first['test_acc']:.4f} |")
    else:
        missing = why_missing(steps, "train")
        out.append(f"| epoch 1 training time (tf32, graph) | {missing} |")
        out.append(f"| test_acc after epoch 1 | {missing} |")
    if reach_seconds is not None:
        reach = f"{reach_seconds:.3f} s of training (epoch {reach_epoch})"
    elif metrics:
        reach = f"not reached in {len(metrics)} epochs"
    else:
        reach = why_missing(steps, "train")
    out.append(f"| time until test_acc ≥ {TARGET_ACCURACY} | {reach} |")
    for tool in SANITIZERS:
        out.append(f"| compute-sanitizer {tool} | {figures['sanitizers'][tool]} |")

    out += ["", f"Each kernel's share of the step ({how}):", ""]
    if shares:
        out += ["| kernel | share | time |", "| --- | --- | --- |"]
        out += [f"| {name} | {share * 100:.1f}% | {note} |" for name, share, note in shares]
    else:
        out.append("(none)")

    torch_version = next((p["torch"] for p in pytorch.values() if p and "torch" in p), None)
    torch_name = f"PyTorch {torch_version}" if torch_version else "PyTorch"
    ours = first["seconds"] if first else None
    out += [
        "",
        f"One training epoch against {torch_name} on the same GPU (batch 64, data on "
        "the GPU; warm-up = compiling or capturing, not in the epoch):",
        "",
        "| setting | epoch | warm-up | test_acc | epoch ÷ handwritten's |",
        "| --- | --- | --- | --- | --- |",
    ]
    if ours:
        out.append(f"| handwritten, tf32, one graph per step | {ours:.3f} s | | "
                   f"{first['test_acc']:.4f} | 1.00 |")
    else:
        missing = why_missing(steps, "train")
        out.append(f"| handwritten, tf32, one graph per step | {missing} | | | |")
    for stem, label, step_name in PYTORCH_SETTINGS:
        found = pytorch[stem]
        if not found or "seconds" not in found:
            out.append(f"| PyTorch {label} | {why_missing(steps, step_name)} | | | |")
            continue
        warmup = f"{found['warmup_seconds']:.1f} s" if "warmup_seconds" in found else ""
        accuracy = f"{found['test_acc']:.4f}" if "test_acc" in found else ""
        ratio = f"{found['seconds'] / ours:.2f}" if ours else ""
        out.append(
            f"| PyTorch {label} | {found['seconds']:.3f} s | {warmup} | {accuracy} | {ratio} |"
        )

    skipped = [
        f"{name} {result[len('skipped ') :]}"
        for name, (result, _) in steps.items()
        if result.startswith("skipped ")
    ]
    failed = [
        f"{name} ({result})" for name, (result, _) in steps.items() if result.startswith("failed")
    ]
    if skipped:
        out += ["", "Skipped: " + "; ".join(skipped)]
    if failed:
        out += ["", "Failed: " + "; ".join(failed)]
    return figures, "\n".join(out) + "\n"


def write_summary(raw):
    """Writes RAW/summary.md and RAW/summary.json; returns the table."""
    figures, table = summarize(raw)
    with open(os.path.join(raw, "summary.md"), "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.join(raw, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(figures, f, indent=1, ensure_ascii=False)
    return table


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        raise SystemExit(f"usage: {sys.argv[0]} RAW_DIR (the folder gpu-check.sh wrote)")
    print(write_summary(sys.argv[1]), end="")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tests of scripts/gpu_summary.py on hand-written raw folders.

Every figure below is an invented fixture in the tools' formats, not a measurement.

    python3 scripts/test_gpu_summary.py
"""

import json
import os
import tempfile
import unittest

import gpu_summary

METRICS = """epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_second
1,0.200000,0.900000,0.050000,0.985000,1.000,60000.0
2,0.050000,0.980000,0.040000,0.991000,2.000,30000.0
3,0.040000,0.990000,0.030000,0.995000,3.000,20000.0
"""

NSYS = """Processing [profile.sqlite] with [cuda_gpu_kern_sum.py]...
Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Name
75.0,"3,000",10,300.0,300.0,300,300,0.0,conv2d_forward_tf32
25.0,1000,10,100.0,100.0,100,100,0.0,adam_update_tensors
"""

NCU = """==PROF== Connected to process 1
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","1","handwritten","host","gather_images","1","7","(256, 1, 1)","(1, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","1.00"
"1","1","handwritten","host","fill_zero","1","7","(256, 1, 1)","(1, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","3,000"
"2","1","handwritten","host","gather_images","1","7","(256, 1, 1)","(1, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","1.00"
"""

PYTORCH_EAGER = """torch 9.9.9 on cuda, 16 threads, eager, Adam, training on 60000 images, testing on 10000
epoch 1, train_loss 0.2000, train_acc 0.9000
test_loss 0.0500 , test_acc 0.9800
seconds 4.000, images_per_second 15000
"""

PYTORCH_GRAPH = """torch 9.9.9 on cuda, 16 threads, the whole step as one CUDA graph, fused Adam, ...
warmup_seconds 5.000
epoch 1, train_loss 0.2000, train_acc 0.9000
test_loss 0.0500 , test_acc 0.9810
seconds 2.000, images_per_second 30000
"""


def write(folder, name, text):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_bench(folder, full_id, seconds, throughput=None):
    """A criterion result as CRITERION_HOME holds it."""
    path = os.path.join("criterion", full_id.replace("/", "_"), "new")
    bench = {"full_id": full_id, "throughput": throughput}
    estimates = {"mean": {"point_estimate": seconds * 1e9}, "slope": None}
    write(folder, os.path.join(path, "benchmark.json"), json.dumps(bench))
    write(folder, os.path.join(path, "estimates.json"), json.dumps(estimates))


def steps(*lines):
    return "".join("\t".join(line) + "\n" for line in lines)


class Summary(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.TemporaryDirectory()
        self.raw = self.folder.name

    def tearDown(self):
        self.folder.cleanup()

    def test_every_figure_present(self):
        write(self.raw, "gpu.txt", "Some GPU, 580.00, 1000 MiB\n")
        write(self.raw, "train/metrics.csv", METRICS)
        for precision, mode, seconds in [
            ("tf32", "graph", 1e-4),
            ("tf32", "eager", 2e-4),
            ("fp32", "graph", 3e-4),
            ("fp32", "eager", 4e-4),
        ]:
            write_bench(self.raw, f"cuda/step/train_b64_{precision}_{mode}", seconds)
        write(self.raw, "profile-nsys.csv", NSYS)
        write(self.raw, "pytorch-eager.log", PYTORCH_EAGER)
        write(self.raw, "pytorch-cuda-graph.log", PYTORCH_GRAPH)
        write(
            self.raw,
            "steps.tsv",
            steps(
                ("test device_ops", "ok", "5"),
                ("test nn_devices", "failed (status 101)", "5"),
                ("train", "ok", "5"),
                ("bench step", "ok", "20"),
                ("pytorch eager", "ok", "9"),
                ("pytorch fused-adam", "failed (status 1)", "3"),
                ("pytorch cuda-graph", "ok", "9"),
                ("memcheck device_ops", "ok", "30"),
                ("memcheck nn_devices", "ok", "30"),
                ("racecheck device_ops", "failed (status 1)", "30"),
                ("racecheck nn_devices", "ok", "30"),
                ("synccheck device_ops", "ok", "30"),
                ("synccheck nn_devices", "skipped (needs 20 s, 5 s left)", "0"),
                ("pytorch compile", "skipped (needs 120 s, 5 s left)", "0"),
            ),
        )
        figures, table = gpu_summary.summarize(self.raw)

        self.assertEqual(figures["step_ms_b64"]["tf32_graph"], 0.1)
        self.assertIn("| training step, batch 64, fp32, eager | 0.400 ms |", table)
        self.assertIn("| epoch 1 training time (tf32, graph) | 1.000 s |", table)
        self.assertIn("| test_acc after epoch 1 | 0.9850 |", table)
        # 0.991 in epoch 2: the first two epochs' training time.
        self.assertIn("| time until test_acc ≥ 0.99 | 3.000 s of training (epoch 2) |", table)
        self.assertIn("| tests on the GPU | FAIL: nn_devices: failed (status 101) |", table)
        self.assertIn("| compute-sanitizer memcheck | pass (2 test binaries) |", table)
        self.assertIn("racecheck | FAIL: device_ops: failed (status 1) |", table)
        self.assertIn("synccheck | incomplete: nn_devices: skipped", table)
        self.assertTrue(figures["kernel_shares_source"].startswith("nsys"))
        shares = {"conv2d_forward_tf32": 0.75, "adam_update_tensors": 0.25}
        self.assertEqual(figures["kernel_shares"], shares)
        # Largest first.
        self.assertLess(
            table.index("| conv2d_forward_tf32 | 75.0%"),
            table.index("| adam_update_tensors | 25.0%"),
        )
        self.assertIn("PyTorch 9.9.9", table)
        self.assertIn("| PyTorch eager | 4.000 s |  | 0.9800 | 4.00 |", table)
        self.assertIn("| PyTorch eager, fused Adam | failed (status 1) |", table)
        graph_row = "one CUDA graph, capturable fused Adam | 2.000 s | 5.0 s | 0.9810 | 2.00 |"
        self.assertIn(graph_row, table)
        self.assertIn('max-autotune"), fused Adam | skipped (needs 120 s, 5 s left) |', table)
        self.assertIn("Skipped: synccheck nn_devices", table)
        self.assertIn("Failed: test nn_devices (failed (status 101)); pytorch fused-adam", table)

    def test_nothing_measured(self):
        write(
            self.raw,
            "steps.tsv",
            steps(
                ("train", "failed (timed out after 180 s)", "180"),
                ("profile", "not installed (nsys, ncu)", "0"),
                ("compute-sanitizer", "not installed", "0"),
                ("pytorch eager", "not installed (python3 with PyTorch and CUDA)", "0"),
            ),
        )
        figures, table = gpu_summary.summarize(self.raw)

        self.assertIn("| training step, batch 64, tf32, graph | not run |", table)
        self.assertIn("| test_acc after epoch 1 | failed (timed out after 180 s) |", table)
        self.assertIn("| time until test_acc ≥ 0.99 | failed (timed out after 180 s) |", table)
        self.assertIn("| compute-sanitizer racecheck | not installed |", table)
        self.assertIn("| tests on the GPU | not run |", table)
        self.assertIn("no profiler (not installed (nsys, ncu)); op bench: not run", table)
        self.assertIn("against PyTorch on the same GPU", table)
        self.assertIn("| PyTorch eager | not installed (python3 with PyTorch and CUDA) |", table)
        self.assertIsNone(figures["epoch1_seconds"])

    def test_accuracy_not_reached(self):
        below = METRICS.replace("0.991000", "0.989000").replace("0.995000", "0.980000")
        write(self.raw, "train/metrics.csv", below)
        write(self.raw, "steps.tsv", steps(("train", "ok", "5")))
        figures, table = gpu_summary.summarize(self.raw)
        self.assertIn("| time until test_acc ≥ 0.99 | not reached in 3 epochs |", table)
        self.assertIsNone(figures["seconds_to_test_acc_0.99"])

    def test_ncu_times_in_mixed_units(self):
        write(self.raw, "profile-ncu.csv", NCU)
        figures, _ = gpu_summary.summarize(self.raw)
        self.assertTrue(figures["kernel_shares_source"].startswith("ncu"))
        # 2 µs of gather_images and 3,000 ns of fill_zero.
        self.assertEqual(figures["kernel_shares"], {"fill_zero": 0.6, "gather_images": 0.4})

    def test_op_bench_fallback(self):
        write_bench(self.raw, "cuda/step/train_b64_fp32_graph", 1e-3)
        write_bench(self.raw, "cuda/linear/fc1_forward/b64", 2e-4, {"Elements": 400_000_000})
        write_bench(self.raw, "cuda/linear/fc1_forward/b1024", 1e-3)
        write_bench(self.raw, "cuda/adam/fc1_weight", 1e-4)
        write(self.raw, "steps.tsv", steps(("profile", "not installed (nsys, ncu)", "0")))
        figures, table = gpu_summary.summarize(self.raw)
        self.assertTrue(figures["kernel_shares_source"].startswith("op bench"))
        shares = {"linear/fc1_forward/b64": 0.2, "adam/fc1_weight": 0.1}
        self.assertEqual(figures["kernel_shares"], shares)
        self.assertIn("| linear/fc1_forward/b64 | 20.0% | 200.0 µs, 2.00 TFLOP/s |", table)

    def test_writes_table_and_figures(self):
        write(self.raw, "train/metrics.csv", METRICS)
        gpu_summary.write_summary(self.raw)
        with open(os.path.join(self.raw, "summary.json")) as f:
            self.assertEqual(json.load(f)["epoch1_test_acc"], 0.985)
        with open(os.path.join(self.raw, "summary.md")) as f:
            self.assertIn("| test_acc after epoch 1 | 0.9850 |", f.read())


if __name__ == "__main__":
    unittest.main()

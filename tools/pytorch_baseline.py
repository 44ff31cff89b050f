#!/usr/bin/env python3
"""The reference network trained in PyTorch: the baseline handwritten competes with.

Same network, data, batch size, optimizer and printed lines as `handwritten train`. The IDX files
are read here and held in memory (on the GPU with --device cuda) as normalised tensors, so the
seconds measure training alone. Besides eager PyTorch, --compile runs the network through
torch.compile(mode="max-autotune") and --cuda-graph replays the whole step as one CUDA graph; both
print the time spent compiling or capturing as `warmup_seconds` before the epochs.

    pip install torch
    python tools/pytorch_baseline.py --threads 2 --fused-adam --flush-denormals
    python3 tools/pytorch_baseline.py --device cuda --cuda-graph --fused-adam
"""

import argparse
import gzip
import os
import struct
import time
import warnings

import torch
from torch import nn

IMAGE_SIDE = 28
TEST_BATCH_SIZE = 1000


class ConvNet(nn.Module):
    """The PyTorch tutorial's MNIST ConvNet; its state_dict names are handwritten's checkpoint names."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, 10)

    def forward(self, x):
        x = self.conv2d(x).flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def read_idx(data_dir, name, magic, limit):
    """The records of data_dir/NAME.gz (or NAME) after checking the IDX magic number."""
    path = os.path.join(data_dir, name + ".gz")
    if os.path.exists(path):
        with gzip.open(path) as f:
            data = f.read()
    else:
        path = os.path.join(data_dir, name)
        with open(path, "rb") as f:
            data = f.read()
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        raise SystemExit(f"{path}: magic number {found}, expected {magic}")
    dims = 3 if magic == 2051 else 1
    header_len = 4 + 4 * dims
    count = min(count, limit) if limit else count
    record_len = IMAGE_SIDE * IMAGE_SIDE if dims == 3 else 1
    records = data[header_len : header_len + count * record_len]
    return torch.frombuffer(bytearray(records), dtype=torch.uint8), count


def load_split(data_dir, prefix, limit):
    """Images as normalised float tensors [N, 1, 28, 28] and labels as int64 [N]."""
    pixels, count = read_idx(data_dir, f"{prefix}-images-idx3-ubyte", 2051, limit)
    labels, _ = read_idx(data_dir, f"{prefix}-labels-idx1-ubyte", 2049, limit)
    images = (pixels.view(count, 1, IMAGE_SIDE, IMAGE_SIDE).float() / 255 - 0.5) / 0.5
    return images, labels.long()


class Step:
    """One Adam step on a batch gathered from the training set, run op by op: eagerly, or through
    `forward` compiled by torch.compile. The loss and accuracy sums stay on the device."""

    def __init__(self, forward, optimizer, images, labels, compiled=False):
        self.forward, self.optimizer = forward, optimizer
        self.images, self.labels = images, labels
        self.compiled = compiled
        self.loss_sum = torch.zeros((), device=labels.device)
        self.correct = torch.zeros((), dtype=torch.long, device=labels.device)

    def __call__(self, batch):
        if self.compiled:
            # Marks a new iteration for the CUDA graphs that max-autotune records.
            torch.compiler.cudagraph_mark_step_begin()
        x, y = self.images[batch], self.labels[batch]
        logits = self.forward(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.loss_sum += loss.detach() * len(batch)
        self.correct += (logits.argmax(1) == y).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


class GraphedStep:
    """The whole step (gather, forward, loss, backward, Adam and the sums) captured once as a CUDA
    graph, then replayed with the batch's indices copied into a fixed buffer. A short last batch is
    padded to the full batch with rows whose label cross_entropy ignores (its mean is over the real
    rows), so one graph serves every step, as in handwritten's trainer. The optimizer must be
    capturable; capturing runs a few steps first, whose effect `restore` undoes."""

    IGNORED = -100

    def __init__(self, model, optimizer, images, labels, batch_size, warmup_steps=3):
        self.model, self.optimizer = model, optimizer
        self.images, self.labels = images, labels
        device = labels.device
        self.index = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.real = torch.ones(batch_size, dtype=torch.bool, device=device)
        self.padded = False
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        # Capture needs warmed-up kernels and allocations, made on a side stream.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        # Gradients allocated inside the capture live in the graph's memory and are written, not
        # accumulated, by every replay.
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def step(self):
        """The captured work: reads only the fixed index and mask buffers."""
        x = self.images[self.index]
        y = self.labels[self.index].masked_fill(~self.real, self.IGNORED)
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y, ignore_index=self.IGNORED)
        self.loss_sum += loss.detach() * self.real.sum()
        # A padding row's label (-100) never equals an argmax.
        self.correct += (logits.argmax(1) == y).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def __call__(self, batch):
        count = len(batch)
        self.index[:count].copy_(batch)
        if count < len(self.index):
            self.index[count:].zero_()
            self.real[count:] = False
            self.padded = True
        elif self.padded:
            self.real.fill_(True)
            self.padded = False
        self.graph.replay()


def train_epoch(step, labels, batch_size):
    """One shuffled pass of Adam steps; returns the mean loss and the accuracy over the pass."""
    step.loss_sum.zero_()
    step.correct.zero_()
    order = torch.randperm(len(labels), device=labels.device)
    for start in range(0, len(labels), batch_size):
        step(order[start : start + batch_size])
    return step.loss_sum.item() / len(labels), step.correct.item() / len(labels)


def warm_up(step, labels, batch_size, repeats=3):
    """Runs `repeats` steps at each batch size an epoch uses, so that compiling and recording
    happen before the clock starts."""
    sizes = {min(batch_size, len(labels)), len(labels) % batch_size} - {0}
    for size in sorted(sizes, reverse=True):
        batch = torch.arange(size, device=labels.device)
        for _ in range(repeats):
            step(batch)


def restore(model, optimizer, initial):
    """Puts back the initial parameters and a fresh optimizer state, in place: captured graphs
    keep the addresses of these tensors."""
    with torch.no_grad():
        for param, value in zip(model.parameters(), initial):
            param.copy_(value)
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model, images, labels):
    """The mean loss and the accuracy over a split, in batches of TEST_BATCH_SIZE."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), TEST_BATCH_SIZE):
        x, y = images[start : start + TEST_BATCH_SIZE], labels[start : start + TEST_BATCH_SIZE]
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(labels), correct / len(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/mnist", help="directory of the MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch.set_num_threads (default: PyTorch's own)"
    )
    parser.add_argument("--fused-adam", action="store_true", help="Adam(fused=True): one pass per update")
    parser.add_argument(
        "--flush-denormals", action="store_true", help="flush subnormal floats to zero (FTZ/DAZ)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda: the whole data set then lives on the GPU"
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="use only the first N training and N test images"
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--compile",
        action="store_true",
        help='torch.compile(mode="max-autotune") the network; compiling is timed apart',
    )
    how.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture the whole step as one CUDA graph and replay it (capturable Adam; cuda only)",
    )
    args = parser.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: PyTorch {torch.__version__} finds no CUDA GPU "
            f"(built for CUDA {torch.version.cuda or 'none'})"
        )
    device = torch.device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise SystemExit(
            f"--cuda-graph: CUDA graphs need --device cuda, not --device {args.device}"
        )
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormals and not torch.set_flush_denormal(True):
        raise SystemExit("--flush-denormals: this CPU cannot flush denormals")
    train_images, train_labels = (t.to(device) for t in load_split(args.data, "train", args.limit))
    test_images, test_labels = (t.to(device) for t in load_split(args.data, "t10k", args.limit))
    model = ConvNet().to(device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=args.lr,
        fused=args.fused_adam or None,
        capturable=args.cuda_graph,
    )
    # Capturing runs its first steps uncaptured, which such an Adam warns of.
    warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
    initial = [param.detach().clone() for param in model.parameters()]
    if args.cuda_graph:
        mode = "the whole step as one CUDA graph"
    elif args.compile:
        mode = 'torch.compile(mode="max-autotune")'
    else:
        mode = "eager"
    print(
        f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads, {mode}, "
        f"{'fused ' if args.fused_adam else ''}Adam, "
        f"training on {len(train_labels)} images, testing on {len(test_labels)}"
    )

    # Compiling and capturing run a few steps first; their time is not an epoch's, and the
    # parameters and Adam's state are put back afterwards.
    start = time.perf_counter()
    if args.cuda_graph:
        step = GraphedStep(model, optimizer, train_images, train_labels, args.batch_size)
    elif args.compile:
        forward = torch.compile(model, mode="max-autotune", dynamic=False)
        step = Step(forward, optimizer, train_images, train_labels, compiled=True)
        warm_up(step, train_labels, args.batch_size)
    else:
        step = Step(model, optimizer, train_images, train_labels)
    if args.cuda_graph or args.compile:
        restore(model, optimizer, initial)
        synchronize(device)
        print(f"warmup_seconds {time.perf_counter() - start:.3f}")

    for epoch in range(1, args.epochs + 1):
        model.train()
        synchronize(device)
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(step, train_labels, args.batch_size)
        seconds = time.perf_counter() - start
        # The uncompiled module shares the parameters: evaluating compiles nothing.
        test_loss, test_acc = evaluate(model, test_images, test_labels)
        print(f"epoch {epoch}, train_loss {train_loss:.4f}, train_acc {train_acc:.4f}")
        print(f"test_loss {test_loss:.4f} , test_acc {test_acc:.4f}")
        print(f"seconds {seconds:.3f}, images_per_second {len(train_labels) / seconds:.0f}")


if __name__ == "__main__":
    main()

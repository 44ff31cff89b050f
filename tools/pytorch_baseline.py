#!/usr/bin/env python3
"""The reference network trained in PyTorch on the CPU: the baseline handwritten competes with.

Same network, data, batch size, optimizer and printed lines as `handwritten train`. The IDX files
are read here and held in memory as normalised tensors, so the seconds measure training alone.

    pip install torch
    python tools/pytorch_baseline.py --threads 2 --fused-adam --flush-denormals
"""

import argparse
import gzip
import os
import struct
import time

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


def train_epoch(model, optimizer, images, labels, batch_size):
    """One shuffled pass of Adam steps; returns the mean loss and the accuracy over the pass."""
    model.train()
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    order = torch.randperm(len(labels), device=labels.device)
    for start in range(0, len(labels), batch_size):
        batch = order[start : start + batch_size]
        x, y = images[batch], labels[batch]
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


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
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormals and not torch.set_flush_denormal(True):
        raise SystemExit("--flush-denormals: this CPU cannot flush denormals")
    device = torch.device(args.device)
    train_images, train_labels = (t.to(device) for t in load_split(args.data, "train", args.limit))
    test_images, test_labels = (t.to(device) for t in load_split(args.data, "t10k", args.limit))
    model = ConvNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=args.fused_adam or None)
    print(
        f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads, "
        f"training on {len(train_labels)} images, testing on {len(test_labels)}"
    )

    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(model, optimizer, train_images, train_labels, args.batch_size)
        seconds = time.perf_counter() - start
        test_loss, test_acc = evaluate(model, test_images, test_labels)
        print(f"epoch {epoch}, train_loss {train_loss:.4f}, train_acc {train_acc:.4f}")
        print(f"test_loss {test_loss:.4f} , test_acc {test_acc:.4f}")
        print(f"seconds {seconds:.1f}, images_per_second {len(train_labels) / seconds:.0f}")


if __name__ == "__main__":
    main()

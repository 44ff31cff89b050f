#!/usr/bin/env python3
"""Writes the PyTorch fixtures that crates/nn/tests/pytorch_fixture.rs checks the nn crate against.

The network is the reference ConvNet at reduced widths (conv channels 4 and 8, hidden 32 and 16,
10 classes, 28x28 inputs), initialised by PyTorch from seed 0. Two Adam steps (lr 0.001, torch's
defaults otherwise) train it with nn.CrossEntropyLoss: step 0 on one batch of 8 images, step 1 on
a second batch of 8. Images are uniform in [-1, 1] (the range of normalised MNIST pixels; random
values avoid the exact ties of MNIST's blank background, where which max a pool picks would depend
on rounding), labels uniform in 0..10.

crates/nn/tests/fixtures/convnet_small.safetensors holds, all F32 but the labels (I64):
  initial.<name>        every parameter before training, <name> its state_dict name
  input.<k>, labels.<k> the batch of step k (0 or 1), [8, 1, 28, 28] and [8]
  logits.<k>, loss.<k>  the forward of step k, [8, 10] and a scalar (the batch's mean loss)
  grad.<k>.<name>       every parameter's gradient at step k
  final.<name>          every parameter after both steps
crates/nn/tests/fixtures/pytorch_checkpoint.safetensors is the trained model's state_dict as
safetensors.torch.save_file writes it: the test loads it with ConvNet::load.

To regenerate (a CPU is enough):
    python3 -m venv .venv && .venv/bin/pip install torch safetensors numpy
    .venv/bin/python tools/make_fixtures.py

With --check PATH it instead loads a checkpoint written by `ConvNet::save` into the reference
PyTorch model (strict load_state_dict, widths taken from the file) and prints its shapes.
"""

import argparse
import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "crates" / "nn" / "tests" / "fixtures"
BATCH = 8
IMAGE_SIZE = 28


class Net(nn.Module):
    """The reference ConvNet; Net() has the reference widths 32/64/1024/512/10."""

    def __init__(self, conv1=32, conv2=64, hidden1=1024, hidden2=512, classes=10, image_size=28):
        super().__init__()
        self.conv2d = nn.Sequential(
            nn.Conv2d(1, conv1, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(conv1, conv2, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        side = image_size // 4
        self.fc1 = nn.Linear(conv2 * side * side, hidden1)
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.fc3 = nn.Linear(hidden2, classes)

    def forward(self, x):
        x = torch.flatten(self.conv2d(x), 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_fixtures():
    torch.manual_seed(0)
    model = Net(conv1=4, conv2=8, hidden1=32, hidden2=16, classes=10, image_size=IMAGE_SIZE)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    loss_fn = nn.CrossEntropyLoss()

    tensors = {f"initial.{name}": p.detach().clone() for name, p in model.named_parameters()}
    for step in range(2):
        images = torch.rand(BATCH, 1, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
        labels = torch.randint(0, 10, (BATCH,))
        optimizer.zero_grad()
        logits = model(images)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()  # after the gradients are recorded below: step() leaves .grad alone
        tensors[f"input.{step}"] = images
        tensors[f"labels.{step}"] = labels
        tensors[f"logits.{step}"] = logits.detach()
        tensors[f"loss.{step}"] = loss.detach()
        for name, p in model.named_parameters():
            tensors[f"grad.{step}.{name}"] = p.grad.detach().clone()
    for name, p in model.named_parameters():
        tensors[f"final.{name}"] = p.detach().clone()

    FIXTURES.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    save_file(tensors, FIXTURES / "convnet_small.safetensors")
    save_file(model.state_dict(), FIXTURES / "pytorch_checkpoint.safetensors")
    print(f"wrote {len(tensors)} tensors and a checkpoint to {FIXTURES}")


def check(path):
    state = load_file(path)
    side = int(round((state["fc1.weight"].shape[1] / state["conv2d.3.weight"].shape[0]) ** 0.5))
    model = Net(
        conv1=state["conv2d.0.weight"].shape[0],
        conv2=state["conv2d.3.weight"].shape[0],
        hidden1=state["fc1.weight"].shape[0],
        hidden2=state["fc2.weight"].shape[0],
        classes=state["fc3.weight"].shape[0],
        image_size=4 * side,
    )
    model.load_state_dict(state, strict=True)
    for name, p in model.named_parameters():
        print(f"{name}: {list(p.shape)}")
    print(f"{path}: loads into the PyTorch model")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", metavar="PATH", help="load a checkpoint written by ConvNet::save")
    args = parser.parse_args()
    if args.check:
        check(args.check)
    else:
        make_fixtures()

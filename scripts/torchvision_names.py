#!/usr/bin/python3
"""mpicnn's parameter names <-> torchvision's ResNet state_dict names, for configs/resnet18.ini and
configs/resnet18_28.ini (and any spec written the same way).

    /usr/bin/python3 scripts/torchvision_names.py model_bundle.h5 resnet18.pt
    /usr/bin/python3 -c "import torch, torchvision; m = torchvision.models.resnet18(num_classes=10);
                         m.load_state_dict(torch.load('resnet18.pt'), strict=True)"

mpicnn names a tensor by its position in the spec, as nn.Sequential would ("<i>.weight", 0-based,
every spec token counted); inside a block "<i>.main.<j>." and "<i>.shortcut.<j>."; copy k of a
repeat(n){...} adds "<i>.<k>.". A residual block B is the path before ".main." or ".shortcut.":
"5" for a top-level residual, "4.1.0" for the residual that is item 0 of copy 1 of repeat 4.

The rule, with suffix one of weight, bias, running_mean, running_var, num_batches_tracked:

    mpicnn                          torchvision
    <first top-level layer>.s       conv1.s          the stem convolution
    <second top-level layer>.s      bn1.s            the stem BatchNorm
    B.main.<1st holder>.s           layerL.k.conv1.s
    B.main.<2nd holder>.s           layerL.k.bn1.s
    B.main.<3rd holder>.s           layerL.k.conv2.s
    B.main.<4th holder>.s           layerL.k.bn2.s
    B.shortcut.<j>.s                layerL.k.downsample.<j>.s   (the 1x1 conv is 0, its bn 1)
    <last top-level layer>.s        fc.s             the classifier

"holder" counts the layers of the main branch that hold tensors (conv, bn; not relu), in spec order:
in "conv bn relu conv bn" they are main.0, main.1, main.3, main.4. Blocks are numbered in spec order
(the order of their paths read as integer tuples) and split into stages by `stages` (ResNet-18:
2, 2, 2, 2): block b is block k of stage L. Relu, pooling and flatten hold no tensors, so that the
(28) variant, which has no max pool, has the same torchvision names with every position after the
stem one less. Its torchvision model is resnet18 with conv1 a 3x3 stride-1 pad-1 convolution and
maxpool nn.Identity() (torchvision_model(small_input=True)); the state_dict keys are resnet18's.

Concretely, for the two configs (top-level positions; everything after the stem one less in (28)):

    configs/resnet18.ini            configs/resnet18_28.ini         torchvision
    0                               0                               conv1
    1                               1                               bn1
    4.k.0.main.{0,1,3,4}            3.k.0.main.{0,1,3,4}            layer1.k.{conv1,bn1,conv2,bn2}
    5 / 7 .main.{0,1,3,4}           4 / 6                           layer2.0 / layer2.1 . ...
    5.shortcut.{0,1}                4.shortcut.{0,1}                layer2.0.downsample.{0,1}
    9 / 11, 13 / 15                 8 / 10, 12 / 14                 layer3.0 / 1, layer4.0 / 1
    19                              18                              fc

e.g. "4.0.0.main.0.weight" -> "layer1.0.conv1.weight", "13.shortcut.1.running_var" ->
"layer4.0.downsample.1.running_var". torchvision_names() gives the whole map, mpicnn_names() its
inverse; tests/core/pytorch/make_resnet_fixtures.py checks both ways against torchvision's state_dict.

Tensor layouts need no change: mpicnn stores PyTorch's (conv (K,C,R,S), dense (out,in)).

BatchNorm's running statistics come from the file's /state group (checkpoints and bundles hold them
under PyTorch's names). A source without them (a file written before BatchNorm state was saved, or
an .npz of weights only) is refused, since torchvision's evaluation mode needs them; with
--allow-missing-state the .pt holds the weights only, for load_state_dict(strict=False).
"""
import argparse
import re
import sys
from collections import OrderedDict

RESNET18_STAGES = (2, 2, 2, 2)
MAIN_HOLDERS = ("conv1", "bn1", "conv2", "bn2")

_BLOCK = re.compile(r"^(?P<block>\d+(?:\.\d+)*)\.(?P<branch>main|shortcut)\.(?P<item>\d+)\.(?P<suffix>\w+)$")
_TOP = re.compile(r"^(?P<item>\d+)\.(?P<suffix>\w+)$")


class NamingError(ValueError):
    """A set of names that does not follow the rule (the message says which name and why)."""


def _path_key(path):
    return tuple(int(p) for p in path.split("."))


def torchvision_names(names, stages=RESNET18_STAGES):
    """{mpicnn name: torchvision name} for every name of `names` (parameters and state), by the rule above."""
    names = list(names)
    blocks, top = {}, {}
    for name in names:
        m = _BLOCK.match(name)
        if m:
            blocks.setdefault(m["block"], {"main": set(), "shortcut": set()})[m["branch"]].add(int(m["item"]))
            continue
        m = _TOP.match(name)
        if not m:
            raise NamingError(f"'{name}' is neither '<i>.<tensor>' nor '<block>.main|shortcut.<j>.<tensor>'")
        top.setdefault(int(m["item"]), set()).add(m["suffix"])

    if len(top) != 3:
        raise NamingError(f"expected 3 top-level layers holding tensors (stem conv, stem bn, classifier), found "
                          f"{len(top)}: {sorted(top)}")
    stem_conv, stem_bn, classifier = sorted(top)
    if stem_conv != 0:
        raise NamingError(f"the stem convolution must be layer 0, found layer {stem_conv} first")
    prefixes = {f"{stem_conv}.": "conv1.", f"{stem_bn}.": "bn1.", f"{classifier}.": "fc."}

    order = sorted(blocks, key=_path_key)
    if len(order) != sum(stages):
        raise NamingError(f"expected {sum(stages)} residual blocks (stages {list(stages)}), found {len(order)}: {order}")
    if any(_path_key(b)[0] <= stem_bn or _path_key(b)[0] >= classifier for b in order):
        raise NamingError(f"residual blocks must lie between the stem bn (layer {stem_bn}) and the classifier "
                          f"(layer {classifier}): {order}")
    stage_of = [(s, k) for s, count in enumerate(stages, start=1) for k in range(count)]
    for block, (stage, k) in zip(order, stage_of):
        holders = sorted(blocks[block]["main"])
        if len(holders) != len(MAIN_HOLDERS):
            raise NamingError(f"block {block}: expected {len(MAIN_HOLDERS)} main-branch layers holding tensors "
                              f"(conv bn relu conv bn), found {len(holders)}: {holders}")
        for item, theirs in zip(holders, MAIN_HOLDERS):
            prefixes[f"{block}.main.{item}."] = f"layer{stage}.{k}.{theirs}."
        for item in sorted(blocks[block]["shortcut"]):
            prefixes[f"{block}.shortcut.{item}."] = f"layer{stage}.{k}.downsample.{item}."

    mapping = OrderedDict()
    for name in names:
        prefix, suffix = name.rsplit(".", 1)
        mapping[name] = prefixes[prefix + "."] + suffix
    if len(set(mapping.values())) != len(mapping):
        raise NamingError("two mpicnn names map to the same torchvision name")
    return mapping


def mpicnn_names(mpicnn_keys, stages=RESNET18_STAGES):
    """{torchvision name: mpicnn name}: the inverse of torchvision_names for the spec whose names are
    `mpicnn_keys` (torchvision's names do not say where a spec puts its relus and pools, so the
    mpicnn side must be known: from the spec, e.g. `mpicnn inspect`, or a bundle)."""
    forward = torchvision_names(mpicnn_keys, stages)
    return OrderedDict((theirs, ours) for ours, theirs in forward.items())


def torchvision_model(num_classes, small_input=False, in_channels=3):
    """torchvision's resnet18; small_input: the MedMNIST (28) variant (3x3 stride-1 stem, no max pool);
    in_channels other than 3 (grey images) replace conv1 by one of the same kind with that many inputs."""
    import torch.nn as nn
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _read_tensors(path):
    """{mpicnn name: numpy array} from an mpicnn bundle (/weights, /state), a checkpoint (/model,
    /state) or a .npz whose keys are mpicnn names."""
    import numpy as np

    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    import h5py

    tensors = {}
    with h5py.File(path, "r") as f:
        groups = [g for g in ("weights", "model", "state") if g in f and isinstance(f[g], h5py.Group)]
        if not groups:
            raise NamingError(f"{path}: no /weights (bundle) or /model (checkpoint) group")
        for group in groups:
            for name, item in f[group].items():
                if isinstance(item, h5py.Dataset):
                    tensors[name] = item[()]
    return tensors


def convert(source, output, allow_missing_state=False):
    """Writes `source`'s tensors (see _read_tensors) as a torchvision resnet18 state_dict to `output`
    (torch.save), after checking that torchvision's model takes it with load_state_dict(strict=True)."""
    import numpy as np
    import torch

    tensors = _read_tensors(source)
    mapping = torchvision_names(tensors)
    state = OrderedDict()
    for ours, theirs in mapping.items():
        value = np.asarray(tensors[ours])
        state[theirs] = torch.tensor(value, dtype=torch.int64 if theirs.endswith("num_batches_tracked") else torch.float32)

    stem = state["conv1.weight"].shape
    model = torchvision_model(state["fc.weight"].shape[0], small_input=tuple(stem[2:]) == (3, 3),
                              in_channels=stem[1])
    missing = [k for k in model.state_dict() if k not in state]
    if missing and not all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in missing):
        raise NamingError(f"{source}: torchvision's model needs {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if missing and not allow_missing_state:
        raise NamingError(f"{source} holds no BatchNorm running statistics ({len(missing)} tensors, e.g. {missing[0]}); "
                          "torchvision's eval mode needs them. --allow-missing-state writes the weights only "
                          "(load with strict=False)")
    model.load_state_dict(state, strict=not missing)
    order = [k for k in model.state_dict() if k in state]  # torchvision's own key order
    torch.save(OrderedDict((k, state[k]) for k in order), output)
    return model, missing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="mpicnn bundle or checkpoint (.h5), or .npz keyed by mpicnn names")
    parser.add_argument("output", help="torchvision state_dict (.pt), for resnet18(...).load_state_dict")
    parser.add_argument("--allow-missing-state", action="store_true",
                        help="write even when the source has no BatchNorm running statistics")
    parser.add_argument("--print", action="store_true", help="print the renaming, one 'mpicnn -> torchvision' a line")
    args = parser.parse_args(argv)
    try:
        model, missing = convert(args.source, args.output, allow_missing_state=args.allow_missing_state)
    except (NamingError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.print:
        theirs_to_ours = {theirs: ours for ours, theirs in torchvision_names(_read_tensors(args.source)).items()}
        for theirs in model.state_dict():
            if theirs in theirs_to_ours:
                print(f"{theirs_to_ours[theirs]} -> {theirs}")
    print(f"wrote {args.output}: {len(model.state_dict()) - len(missing)} tensors of torchvision resnet18"
          + (f", without {len(missing)} BatchNorm statistics" if missing else ", load_state_dict(strict=True) checked"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

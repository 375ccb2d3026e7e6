#!/usr/bin/python3
"""Generate the ONNX backend *node* conformance test data (onnx 1.12).

Usage:  /usr/bin/python3 tests/conformance/generate_node_tests.py --out DIR
            [--op-type OP] [--force]

Debian's python3-onnx does not ship onnx/backend/test/data, so the data is
regenerated from the test-case definitions in onnx.backend.test.case, running
onnx's own writer (onnx.backend.test.cmd_tools.generate_data, i.e. what
`python -m onnx.backend.test.cmd_tools generate-data -o DIR` does) in-process.

Writes:

  DIR/node/test_<name>/model.onnx
  DIR/node/test_<name>/test_data_set_0/input_<i>.pb    TensorProto (or
  DIR/node/test_<name>/test_data_set_0/output_<i>.pb   Sequence/Optional/Map
                                                        proto, as upstream)
  DIR/.complete      written last; records the onnx version, the --op-type
                     selection and the case count

Only node tests are kept: upstream's generator also emits DIR/real/ (just
data.json files pointing at model-zoo downloads) and DIR/simple/ (a few small
multi-node models); both are dropped.  Run time is ~2 s, ~25 MB.

Idempotent: if DIR/.complete exists and was written by the same onnx version
for the same --op-type selection, nothing is done (use --force to
regenerate).  Otherwise DIR/node is rebuilt from scratch via a staging
directory inside DIR.  The numpy and python RNGs are seeded, so repeated runs
write identical files.

Compatibility shim: onnx 1.12 still uses np.float / np.int / np.bool /
np.object, which numpy 1.24 removed; they are restored (as the builtins they
used to alias) before onnx is imported.
"""

import argparse
import os
import random
import shutil
import sys
import time

import numpy as np

for _name, _builtin in (("float", float), ("int", int), ("bool", bool),
                        ("object", object)):
    if _name not in np.__dict__:
        setattr(np, _name, _builtin)

import onnx  # noqa: E402
import onnx.backend.test.cmd_tools as cmd_tools  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--op-type", default=None,
                    help="only test cases containing this op type "
                         "(upstream's -t); default: all")
    ap.add_argument("--force", action="store_true",
                    help="regenerate even if DIR/.complete exists")
    args = ap.parse_args(argv)

    out = os.path.abspath(args.out)
    marker = os.path.join(out, ".complete")
    header = f"onnx {onnx.__version__}\nop_type {args.op_type or '*'}\n"
    if os.path.exists(marker) and not args.force:
        with open(marker) as f:
            if f.read().startswith(header):
                print(f"{out}: already complete, skipping")
                return 0

    t0 = time.monotonic()
    os.makedirs(out, exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)
    staging = os.path.join(out, ".staging")
    shutil.rmtree(staging, ignore_errors=True)

    # Many test cases draw from np.random without seeding; seed for
    # reproducible output.
    np.random.seed(0)
    random.seed(0)
    cmd_tools.generate_data(
        argparse.Namespace(output=staging, op_type=args.op_type))

    staged_node = os.path.join(staging, "node")
    if not os.path.isdir(staged_node):
        raise SystemExit("generator wrote no node tests")
    cases = sorted(d for d in os.listdir(staged_node)
                   if os.path.isfile(os.path.join(staged_node, d,
                                                  "model.onnx")))
    if not cases:
        raise SystemExit("generator wrote no node tests")

    node_dir = os.path.join(out, "node")
    shutil.rmtree(node_dir, ignore_errors=True)
    os.replace(staged_node, node_dir)
    shutil.rmtree(staging)

    with open(marker, "w") as f:
        f.write(f"{header}{len(cases)} node tests\n")
    print(f"{out}: {len(cases)} node test cases (onnx {onnx.__version__}) "
          f"in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Narrow down where bf16 training turns to NaN on a CPU (issue 14): the issue's reproduction over shapes,
memory layouts, normalisations and oneDNN settings, each in a fresh process.

The reproduction: MONAI ``UNet(3D, 16-32-64-128-256, 2 residual units)``, DiceCE, AdamW 1e-3, three steps on
a random batch under CPU bfloat16 autocast. Each variant records, per step, the loss, how many parameter
gradients are non-finite, and the step's seconds; a variant "fails" when any loss or gradient is non-finite.
Variants: the batch shapes the issue named (8 x 48 x 48 x 16 failed on an AMX CPU; 2 x 48 x 48 x 16,
8 x 64 x 64 x 16 and 2 x 96 x 96 x 64 did not), channels-last 3D or not, batch or instance norm, oneDNN on
or off (``torch.backends.mkldnn.enabled``), and oneDNN capped below AMX (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``,
which the issue found cures it). Run it on the CPU in question:

    .venv/bin/python scripts/bf16_kernel_check.py          # about 2 minutes on 2 cores

Writes ``benchmarks/results/bf16_kernels_<cpu>.json`` with the command, CPU, its instruction sets, torch's
CPU capability and git revision, and the oneDNN implementations the failing shape's convolutions used
(from ``ONEDNN_VERBOSE``), so two machines can be compared kernel by kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

SHAPES = [(8, 48, 48, 16), (2, 48, 48, 16), (8, 64, 64, 16), (2, 96, 96, 64)]
CHILD = r"""
import json, sys, time, torch
from monai.networks.nets import UNet
from monai.losses import DiceCELoss
spec = json.loads(sys.argv[1])
if not spec["mkldnn"]:
    torch.backends.mkldnn.enabled = False
torch.manual_seed(0)
net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm=spec["norm"])
b, *size = spec["shape"]
x = torch.rand(b, 1, *size)
y = (x > 0.9).long()
if spec["channels_last"]:
    net = net.to(memory_format=torch.channels_last_3d)
    x = x.contiguous(memory_format=torch.channels_last_3d)
opt = torch.optim.AdamW(net.parameters(), 1e-3)
loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
steps = []
for _ in range(spec["steps"]):
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
        loss = loss_fn(net(x), y)
    opt.zero_grad()
    loss.backward()
    bad = sum(int(not torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)
    opt.step()
    steps.append({"loss": float(loss.detach()), "nonfinite_grads": bad, "seconds": round(time.perf_counter() - t, 3)})
print("RESULT " + json.dumps(steps))
"""


def run_variant(spec: dict, env_extra: dict | None = None, verbose: bool = False) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env,
                          timeout=900)
    out = {"spec": spec, "env": env_extra or {}}
    lines = proc.stdout.splitlines()
    result = [line for line in lines if line.startswith("RESULT ")]
    if proc.returncode != 0 or not result:
        out["error"] = (proc.stderr or proc.stdout)[-800:]
        return out
    steps = json.loads(result[-1][7:])
    out["steps"] = steps
    out["failed"] = any(s["nonfinite_grads"] or s["loss"] != s["loss"] or abs(s["loss"]) == float("inf") for s in steps)
    if verbose:  # oneDNN's lines: "onednn_verbose,v1,primitive,exec,cpu,<operation>,<implementation>,<prop_kind>,..."
        fields = [line.split(",") for line in lines if line.startswith("onednn_verbose,")]
        out["onednn_isa"] = next((f[-1] for f in fields if len(f) >= 5 and f[2] == "info" and f[-1].startswith("isa:")),
                                 None)
        out["onednn_convolution_implementations"] = sorted(
            {f"{f[5]} {f[6]} {f[7]}" for f in fields if len(f) > 7 and f[2] == "primitive" and f[3] == "exec"
             and f[5] in ("convolution", "deconvolution")})
    return out


def main(argv=None) -> int:
    from _provenance import cpu_tag, machine_provenance

    from monai_pipeline.io.atomic import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", help="result file (default benchmarks/results/bf16_kernels_<cpu>.json)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bf16_kernels_{cpu_tag()}.json"

    base = {"norm": "batch", "channels_last": False, "mkldnn": True, "bf16": True, "steps": args.steps}
    variants: list[tuple[dict, dict | None, bool]] = []
    for shape in SHAPES:
        for channels_last in (False, True):
            variants.append(({**base, "shape": list(shape), "channels_last": channels_last}, None, False))
    failing = list(SHAPES[0])
    variants += [
        ({**base, "shape": failing, "norm": "instance"}, None, False),
        ({**base, "shape": failing, "mkldnn": False}, None, False),
        ({**base, "shape": failing}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, False),
        ({**base, "shape": failing, "bf16": False}, None, False),
        ({**base, "shape": failing, "steps": 1}, None, True),  # which kernels ran
    ]
    results = []
    for spec, env, verbose in variants:
        r = run_variant(spec, env, verbose)
        results.append(r)
        status = "error" if "error" in r else ("NON-FINITE" if r["failed"] else "finite")
        print(f"{json.dumps(spec)} {json.dumps(env or {})}: {status}", flush=True)
    result = {
        "what": "issue 14's bf16 reproduction (UNet 3D, DiceCE, AdamW 1e-3) over shapes, layouts, norms and oneDNN "
                "settings; 'failed' = a non-finite loss or gradient in any step",
        **machine_provenance("bf16_kernel_check.py", list(argv or sys.argv[1:])),
        "any_failed": any(r.get("failed") for r in results),
        "variants": results,
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

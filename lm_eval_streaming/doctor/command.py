"""``lm-eval-streaming doctor``: is this device and dtype sound for scoring, before any weights are downloaded?

No weights, no hub. Checks, in the dtype on the device:

1. torch / transformers / OS / device versions against a table of known half-precision defects
   (``doctor/defects.py``: pytorch#195910 MPS is_causal leak, fixed in torch 2.13.0; pytorch PR #190791 MPS
   softmax precision past ~3k keys, open; gpt-neox#1003 half-precision rotary; transformers#30199 float16
   overflow in GPT-NeoX);
2. every available attention kernel (sdpa without and with a mask, eager, the project's kernel, flash/flex
   where installed) at each length: the causality probe (keys after p replaced: outputs at positions <= p must
   not move) and the error against the project's float32 reference on the same q/k/v, with activations shaped
   like the model's heads and a sink key with a large norm;
3. the rotary tables' precision at every position up to the longest length.

One verdict table; ``--output`` writes it as JSON (``analyze`` reads it), with the line
"<DEVICE> <dtype> on this machine: causal leak found / not found".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lm_eval_streaming.benchmark.shapes import SHAPES
from lm_eval_streaming.doctor.defects import KNOWN_DEFECTS, defect_status
from lm_eval_streaming.options import DTYPE_NAMES, StreamingArgError, as_int, check_dtype, check_device_name, \
    int_list

SCHEMA = "lm_eval_streaming.doctor/1"
# half-precision matmuls on a CPU are slow: up to 4096 tokens there keeps a run within 2 minutes (the MPS softmax
# defect shows past ~3068); a GPU or a Mac goes to 8192
DEFAULT_LENGTHS = {"cpu": "512,1024,2048,4096", "cuda": "512,1024,2048,4096,8192", "mps": "512,1024,2048,4096,8192"}
# kernels left out of the default list on a device: flex attention on a CPU runs an unfused fallback (minutes)
SLOW_KERNELS = {"cpu": ("flex_attention",)}
CAUSAL_TOL = 1e-2  # max |d output| at positions <= p above this: the kernel lets a position see the future
# a relative error above ERROR_EPS x the dtype's epsilon loses precision; floors for float32, whose own rounding
# (sums over 8192 keys, angles up to 8192 rad rounded to float32: ~5e-4) would otherwise count as a defect
ERROR_EPS, KERNEL_FLOOR, ROTARY_FLOOR = 16, 1e-4, 1e-3


def add_parser(subparsers):
    p = subparsers.add_parser("doctor", help="no-weights check of a device/dtype: known defects, kernels, rotary",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float16", help=f"one of {', '.join(DTYPE_NAMES)}")
    p.add_argument("--shape", default="pythia-6.9b", help=f"head shapes of this model: {', '.join(SHAPES)}")
    p.add_argument("--lengths", default=None, help="comma list of sequence lengths (tokens) (default: "
                   + "; ".join(f"{d}: {v}" for d, v in DEFAULT_LENGTHS.items()) + ")")
    p.add_argument("--heads", type=int, default=None,
                   help="attention heads per call (default: 1 on a CPU, where half-precision matmuls are slow, "
                        "else all of the shape's; each head is computed independently)")
    p.add_argument("--kernels", default=None,
                   help="comma list of attention implementations (default: every one available here; on a CPU "
                        "without flex_attention, whose CPU fallback takes minutes)")
    p.add_argument("--output", default=None, help="write the verdicts as JSON here (read by analyze)")
    return p


def _validate(args) -> None:
    """Every argument, before torch does any work."""
    check_dtype(args.dtype)
    check_device_name(args.device)
    if args.shape not in SHAPES:
        raise StreamingArgError(f"shape={args.shape!r} is unknown: expected one of {', '.join(SHAPES)}")
    device_type = args.device.split(":")[0]
    args.lengths = int_list("lengths", args.lengths or DEFAULT_LENGTHS[device_type], 16)
    args.heads = as_int("heads", args.heads, 1, allow_none=True)
    if args.output:
        from lm_eval_streaming.records.io import check_writable

        check_writable(Path(args.output))


def versions(device) -> dict[str, str]:
    import platform

    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "os": platform.platform(), "machine": platform.machine()}
    if device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
        out["cuda"] = str(torch.version.cuda)
    elif device.type == "mps":
        out["device"] = f"Apple {platform.machine()} macOS {platform.mac_ver()[0]}"
    else:
        out["device"] = platform.processor() or platform.machine()
    return out


def kernel_verdict(r, tol: float) -> str:
    if r.error is not None:
        return "failed to run"
    if r.causal_max_abs != r.causal_max_abs or r.causal_max_abs > CAUSAL_TOL:
        return "BROKEN: causal leak"
    if r.rel_error_max != r.rel_error_max or r.rel_error_max > tol:
        return "BROKEN: imprecise"
    return "ok"


def diagnose(device: str, dtype: str, shape: str, lengths: list[int], heads: int | None,
             kernels: list[str] | None = None,
             rotaries: dict | None = None, say=print) -> dict:
    """Everything the doctor measures, as the JSON record (``rotaries``: name -> factory(rot_dim), default the
    transformers implementation)."""
    import torch

    from lm_eval_streaming.core.attention import attention_names, check_attention_name
    from lm_eval_streaming.doctor import probes
    from lm_eval_streaming.options import resolve_device, torch_dtype

    started = time.perf_counter()
    dev = torch.device(resolve_device(device))
    dt = torch_dtype(dtype)
    cfg = SHAPES[shape]
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    heads = min(heads or (1 if dev.type == "cpu" else cfg["num_attention_heads"]), cfg["num_attention_heads"])
    rot_dim = int(head_dim * 0.25)  # Pythia's rotary_pct
    tol = max(ERROR_EPS * torch.finfo(dt).eps, KERNEL_FLOOR)
    rotary_tol = max(ERROR_EPS * torch.finfo(dt).eps, ROTARY_FLOOR)
    for name in kernels or []:
        check_attention_name(name, "kernels")
    names = kernels or [n for n in attention_names(available_only=True) if n not in SLOW_KERNELS.get(dev.type, ())
                        and (not n.startswith("flash_attention") or dev.type == "cuda")]
    calls = probes.kernel_calls(names)
    vers = versions(dev)
    results = []
    for n in lengths:
        q, k, v = (t.to(dev, dt) for t in probes.activations(n, heads, head_dim))
        ref = probes.reference_output(q, k, v)
        for (kernel, path), fn in calls.items():
            r = probes.check_kernel(fn, kernel, path, q, k, v, ref)
            say(f"doctor: {kernel} ({path}) at {n} tokens: {kernel_verdict(r, tol)}")
            results.append(r)
        del q, k, v, ref
    rotaries = rotaries or probes.ROTARY_IMPLEMENTATIONS
    rot = [probes.check_rotary(name, make(rot_dim), rot_dim, max(lengths), dt, dev, rotary_tol)
           for name, make in rotaries.items()]
    kernel_rows = [{**r.as_dict(), "verdict": kernel_verdict(r, tol)} for r in results]
    rotary_rows = [{**r.as_dict(), "verdict": "ok" if r.first_bad_position is None else
                    f"BROKEN: wrong from position {r.first_bad_position}"} for r in rot]
    leaks = sorted({f"{r['kernel']} ({r['path']})" for r in kernel_rows if r["verdict"] == "BROKEN: causal leak"})
    return {
        "schema": SCHEMA, "device": str(dev), "device_type": dev.type, "dtype": dtype, "shape": shape,
        "head_dim": head_dim, "heads": heads, "rotary_dims": rot_dim,
        "lengths": lengths, "versions": vers,
        "tolerance": {"causal_max_abs": CAUSAL_TOL, "rel_error": tol, "rotary_rel_error": rotary_tol},
        "known_defects": [{"ref": d.ref, "summary": d.summary, "fixed_in": d.fixed_in,
                           "status": defect_status(d, dev.type, dtype, vers)} for d in KNOWN_DEFECTS],
        "kernels": kernel_rows, "rotary": rotary_rows,
        "causal_leak": bool(leaks), "leaking_kernels": leaks,
        "imprecise_kernels": sorted({f"{r['kernel']} ({r['path']})" for r in kernel_rows
                                     if r["verdict"] == "BROKEN: imprecise"}),
        "rotary_broken": [r["implementation"] for r in rotary_rows if r["verdict"] != "ok"],
        "summary": summary_line(dev.type, dtype, leaks),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def summary_line(device_type: str, dtype: str, leaks: list[str]) -> str:
    found = f"found ({', '.join(leaks)})" if leaks else "not found"
    return f"{device_type.upper() if device_type != 'cuda' else 'CUDA'} {dtype} on this machine: causal leak {found}"


def verdict_table(record: dict) -> str:
    from tabulate import tabulate

    def num(x):
        return "-" if x is None else f"{x:.2g}"

    lines = [f"doctor: {record['device']} {record['dtype']}, heads shaped like {record['shape']} "
             f"(head_dim {record['head_dim']}, {record['rotary_dims']} rotary dims); "
             + ", ".join(f"{k} {v}" for k, v in record["versions"].items())]
    lines += ["", "known defects", tabulate([[d["ref"], d["summary"], d["fixed_in"] or "-", d["status"]]
                                             for d in record["known_defects"]],
                                            headers=["defect", "what", "fixed in", "this machine"], tablefmt="github")]
    rows = [[r["kernel"], r["path"], r["length"], num(r["causal_max_abs"]), num(r["rel_error_max"]),
             num(r["rel_error_late"]), r["verdict"] + (f" ({r['error']})" if r["error"] else "")]
            for r in record["kernels"]]
    rows += [[f"rotary: {r['implementation']}", "", f"0..{r['max_position'] - 1}", "", num(r["rel_error_max"]), "",
              r["verdict"]] for r in record["rotary"]]
    tol = record["tolerance"]
    lines += ["", f"verdicts (causal leak: max |d output| > {CAUSAL_TOL:g}; imprecise: relative error > "
                  f"{tol['rel_error']:.3g}, rotary > {tol['rotary_rel_error']:.3g})",
              tabulate(rows, headers=["check", "path", "tokens", "causal max |d out|", "rel error max",
                                      "rel error last 1/4", "verdict"], tablefmt="github"),
              "", record["summary"] + f" ({record['elapsed_s']} s)"]
    return "\n".join(lines)


def run(args) -> int:
    _validate(args)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()] if args.kernels else None
    record = diagnose(args.device, args.dtype, args.shape, args.lengths, args.heads, kernels,
                      say=lambda line: print(line, file=sys.stderr))
    print(verdict_table(record))
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")
        print(f"doctor record written to {args.output}")
    return 0

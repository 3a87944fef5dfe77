"""CPU kernels: edgecnn's default schedules against onnxruntime, PyTorch and TVM's zero pipeline.

For each model, in one process, with rounds interleaved (these machines drift 5-40% between
runs): onnxruntime with the same thread count, PyTorch CPU when installed, TVM's untuned zero
pipeline, edgecnn's default CPU schedules (untuned), and edgecnn tuned when ``--tune-trials``
gives a budget. The PyTorch peer is a graph-walking mirror, not ``torch.nn`` layers: the test
fixtures' ``graph_to_torch`` (tests/compiler/conftest.py), one module whose forward walks
edgecnn's graph node by node calling ``torch.nn.functional`` in eager mode; it is labelled so in
the output and the JSON. All timing is ``edgecnn.runtime.timing.interleaved``: each round times
a block per peer after a settle pause and a warm-up; PyTorch and the zero pipeline are timed in
their own runs, each interleaved with onnxruntime. A ratio is the median over rounds of the
peer's p50 over onnxruntime's p50 in the same round (``paired_ratio``); the latencies printed
are p50s over all rounds.

Printed per model: p50 latency, ratio to onnxruntime, GFLOP/s and the fraction of the machine's
measured fp32 peak (a 2048x2048 SGEMM through NumPy's BLAS with the same threads). With
``--layers`` it also times every compiled function of the edgecnn module alone: share of the
model, GFLOP/s, fraction of peak. Writes ``bench/results/cpu_kernels.json`` and a PNG chart.

    .venv/bin/python bench/cpu_kernels.py                       # whole suite, 2 threads
    .venv/bin/python bench/cpu_kernels.py --models 3conv-224 vgg-small --layers
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from _common import machine, print_table, pyplot, save_figure, set_threads, write_result

from edgecnn.runtime.timing import flatten, interleaved, paired_ratio, time_calls

LIGHT_DIR = "backend/test/data/light"
LIGHT_MODELS = {"resnet50": "light_resnet50.onnx", "squeezenet": "light_squeezenet.onnx"}
PLAIN_NET = "3conv-224"
# what the "pytorch" peer is, in the printed table, the chart and the JSON
PEER_NOTES = {"pytorch": "graph-walking mirror: tests/compiler/conftest.py graph_to_torch, one torch.nn.Module "
                         "whose forward walks the edgecnn graph calling torch.nn.functional per node "
                         "(eager, no torch.nn layers)"}
LABELS = {"pytorch": "pytorch (graph-walking mirror)"}


def parse_args(argv=None):
    from edgecnn.compiler import zoo

    names = [*zoo.NAMES, *LIGHT_MODELS, PLAIN_NET]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=names, choices=names)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds per model")
    p.add_argument("--per-round", type=int, default=6,
                   help="timed calls per peer per round, at least (a faster peer makes as many as fill "
                        "~20 ms), after a ~20 ms warm-up")
    p.add_argument("--target", default="host", help="edgecnn CPU preset (must run on this machine)")
    p.add_argument("--zero-max-s", type=float, default=60.0,
                   help="skip TVM's zero pipeline for a model when one call takes longer")
    p.add_argument("--no-zero", action="store_true", help="do not build TVM's zero pipeline")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule trials for the tuned edgecnn peer (0: not run)")
    p.add_argument("--layers", action="store_true", help="time every compiled function alone")
    p.add_argument("--name", default="cpu_kernels", help="result file stem under bench/results/")
    p.add_argument("--no-winograd", action="store_true", help="direct convolutions only")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    return p.parse_args(argv)


# -- models ------------------------------------------------------------------------------------

def plain_net_onnx():
    """Three 3x3 convolutions at 224x224, about 0.95 GFLOP: conv 3->32 stride 2, conv 32->64,
    max pool, conv 64->128, global average pool, dense 128->10 (fixed seed)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(x, cin, cout, stride, name):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"],
                                      kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"]))
        return f"{name}.r"

    y = conv("input", 3, 32, 2, "conv1")
    y = conv(y, 32, 64, 1, "conv2")
    nodes.append(helper.make_node("MaxPool", [y], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    y = conv("pool", 64, 128, 1, "conv3")
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = (rng.standard_normal((10, 128)) * 0.1).astype(np.float32)
    inits.extend([numpy_helper.from_array(w, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, PLAIN_NET, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def load_model(name):
    """(onnx ModelProto with batch 1, edgecnn Graph or None)."""
    import onnx

    from edgecnn.compiler import onnx_io, zoo

    if name in LIGHT_MODELS:
        path = Path(onnx.__file__).parent / LIGHT_DIR / LIGHT_MODELS[name]
        model = onnx.load(str(path))
    elif name == PLAIN_NET:
        model = plain_net_onnx()
    else:
        return onnx_io.export_model(zoo.build(name, seed=0), static_batch=1), zoo.build(name, seed=0)
    try:
        graph = onnx_io.import_model(model)
    except Exception:  # noqa: BLE001 - the PyTorch peer is optional; the ONNX path is what we bench
        graph = None
    return model, graph


def input_feeds(model):
    import numpy as np

    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    rng = np.random.default_rng(0)
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


# -- peers -------------------------------------------------------------------------------------

def ort_peer(model, feeds, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)[0]


def torch_peer(graph, feeds, threads):
    try:
        import torch
    except ImportError:
        return None
    if graph is None:
        return None
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "compiler" / "conftest.py"
    spec = importlib.util.spec_from_file_location("edgecnn_test_conftest", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        mirror = module.graph_to_torch(graph).eval()
    except BaseException:  # noqa: BLE001 - pytest.fail raises BaseException for unmapped ops
        return None
    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(v) for v in feeds.values()]

    def run():
        with torch.no_grad():
            out = mirror(*tensors)
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    return run


def _vm_peer(executable, feeds):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]

    def run():
        out = vm["main"](*args)
        return (out[0] if not hasattr(out, "numpy") else out).numpy()

    return run


def relax_module(model):
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(model, keep_params_in_input=False)


def zero_peer(model, feeds, target):
    import tvm
    from tvm import relax

    mod = relax_module(model)
    with target:
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                        relax.get_pipeline("zero")])(mod)
    return _vm_peer(tvm.compile(mod, target=target), feeds)


def edgecnn_build(model, target):
    """What ``edgecnn compile`` builds: ``frontend.to_relax`` (constant work folded, the rest
    high-level), then the CPU preset's passes."""
    from edgecnn.compiler.tvm import frontend, pipelines

    lowered = pipelines.lower(frontend.to_relax(model), target)
    return pipelines.compile_lowered(lowered, target, "bench"), lowered


def tuned_database(model, preset_name, trials, work_dir):
    """MetaSchedule records through edgecnn's own tuning path (the one `edgecnn compile --tune`
    takes: blocked-layout tasks, budget split by weight, in-process builder) in a fresh database."""
    from edgecnn.compiler.tvm import frontend, tuning
    from edgecnn.targets.presets import get_preset

    database, info = tuning.prepare(frontend.to_relax(model), get_preset(preset_name), trials=trials,
                                    db_root=work_dir, log=lambda m: print(m, file=sys.stderr))
    print(f"tuning: {info}", file=sys.stderr)
    return database


# -- measurement -------------------------------------------------------------------------------

def peak_gflops(threads: int) -> float:
    """fp32 GFLOP/s of a 2048x2048 SGEMM through NumPy's BLAS: the measured ceiling."""
    import numpy as np

    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    a @ b
    return 2 * n ** 3 / min(time_calls(lambda: a @ b, 5)) / 1e9


def function_flops(func) -> int:
    """Useful FLOPs of a function: 2 x the iteration space of its largest reduction block (the
    MACs of a direct conv or dense); for a Winograd conv, the direct conv's FLOPs (output size
    x input channels x 9 x 2), so its GFLOP/s compare with direct convs and onnxruntime."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = {str(sch.get(b).name_hint): b for b in _all_blocks(sch)}
    if any(name.startswith("winograd_output") for name in blocks):
        # data (N, IC/b, H, W, b) first, output (N, OC/b, OH, OW, b) last
        data, out = func.params[0].shape, func.params[-1].shape
        outputs = 1
        for d in out:
            outputs *= int(d)
        return 2 * outputs * int(data[1]) * int(data[4]) * 9
    best = 0
    for block in blocks.values():
        iters = sch.get(block).iter_vars
        if not any(int(iv.iter_type) == 2 for iv in iters):
            continue
        size = 1
        for iv in iters:
            size *= int(iv.dom.extent)
        best = max(best, size)
    return 2 * best


def _all_blocks(sch):
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def function_library(lowered, target):
    """The model's PrimFuncs compiled into one library, each under its own name."""
    import tvm

    return tvm.compile(tvm.IRModule({g.name_hint: f.with_attr("global_symbol", g.name_hint)
                                     for g, f in lowered.functions_items()
                                     if isinstance(f, tvm.tirx.PrimFunc)}), target=target)


def layer_profile(lowered, library, rounds=7) -> list[dict]:
    """Each compiled function alone, on random inputs of its shapes; ``ms`` and ``flops`` are
    totals over the function's calls in the model."""
    import numpy as np
    import tvm

    rows = []
    counts = call_counts(lowered)
    for g_var, func in lowered.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or not counts.get(g_var.name_hint):
            continue
        try:
            flops = function_flops(func)
        except Exception:  # noqa: BLE001 - unscheduled-looking funcs without a root block
            flops = 0
        args = [tvm.runtime.tensor(np.random.default_rng(0).random([int(s) for s in p.shape]).astype(p.dtype))
                for p in func.params]
        fn = library[g_var.name_hint]
        # timed hot, as in the model, where the layer before kept both cores busy: no settle pause
        times = interleaved({"f": lambda: fn(*args)}, rounds=1, calls=rounds, round_seconds=0,
                            settle_seconds=0)["f"]
        calls = counts[g_var.name_hint]
        one_call_ms = statistics.median(flatten(times)) * 1e3
        rows.append({"function": g_var.name_hint, "calls": calls, "ms": one_call_ms * calls,
                     "ms_per_call": one_call_ms, "flops": flops * calls})
    return rows


def layer_profile_in_model(lowered, library, feeds, runs=50) -> dict:
    """Milliseconds each function takes inside the model, totalled over its calls in one run
    (median over ``runs`` runs): ``main``'s calls made one after another on the model's own
    intermediate tensors, as the VM makes them (reshapes are views, as in the VM, and take no
    time). Alone, a function reads inputs that stay in its own core's cache; in the model it
    reads what the layer before wrote on both cores (one of SqueezeNet's Winograd convs, two calls:
    0.33 ms alone, 0.46 in the model, Zen 4)."""
    import numpy as np
    import tvm
    from tvm import relax

    main = relax.transform.RewriteDataflowReshape()(lowered)["main"]
    values = {param: tvm.runtime.tensor(np.ascontiguousarray(v)) for param, v in zip(main.params, feeds.values())}

    def value(expr):
        return expr.value if isinstance(expr, tvm.ir.expr.Constant) else values[expr]

    steps = []  # (function name, compiled function, arguments)
    for block in main.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if call.op.name == "relax.reshape":
                values[binding.var] = value(call.args[0])._create_view([int(d) for d in call.ty.shape])
                continue
            if call.op.name != "relax.call_tir":
                raise ValueError(f"layer profile: main calls {call.op.name}, not a PrimFunc")
            name = call.args[0].name_hint
            out_ty = call.ty_args[0]
            out = tvm.runtime.empty([int(d) for d in out_ty.shape], out_ty.dtype)
            values[binding.var] = out
            steps.append((name, library[name], [value(a) for a in call.args[1].fields] + [out]))
    per_run = []
    for _ in range(runs + 5):
        times = {}
        for name, fn, args in steps:
            start = time.perf_counter()
            fn(*args)
            times[name] = times.get(name, 0.0) + time.perf_counter() - start
        per_run.append(times)
    per_run = per_run[5:]  # the first runs warm up
    return {name: statistics.median(r[name] for r in per_run) * 1e3 for name in per_run[0]}


def call_counts(lowered) -> dict:
    """How many times ``main`` calls each PrimFunc: Relax shares one function between layers of
    the same shape (SqueezeNet's fire modules, ResNet-50's repeated blocks)."""
    import tvm
    from tvm import relax

    counts: dict = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            counts[name] = counts.get(name, 0) + 1

    relax.analysis.post_order_visit(lowered["main"], visit)
    return counts


def model_flops(lowered) -> int:
    import tvm

    counts = call_counts(lowered)
    total = 0
    for g_var, func in lowered.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                total += function_flops(func) * counts.get(g_var.name_hint, 0)
            except Exception:  # noqa: BLE001
                pass
    return total


def chart(results, path):
    plt = pyplot()

    peers = [p for p in ("pytorch", "tvm-zero", "edgecnn", "edgecnn-tuned")
             if any(p in r["ratio_to_onnxruntime"] for r in results)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(results)), 4))
    width = 0.8 / max(len(peers), 1)
    for i, peer in enumerate(peers):
        values = [r["ratio_to_onnxruntime"].get(peer, float("nan")) for r in results]
        ax.bar([x + i * width for x in range(len(results))], values, width, label=LABELS.get(peer, peer))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(results))])
    ax.set_xticklabels([r["model"] for r in results], rotation=20)
    ax.set_ylabel("p50 latency / onnxruntime (log)")
    ax.set_title("batch 1 CPU latency relative to onnxruntime (lower is faster)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import numpy as np

    from edgecnn.targets.presets import get_preset

    target = get_preset(args.target).target()
    if args.no_winograd:
        from edgecnn.compiler.tvm.schedules.cpu import legalize

        legalize.use_winograd = lambda *shape: False
    # the ceiling is the best SGEMM seen: measured before every model, as load comes and goes
    peak = peak_gflops(args.threads)
    print(f"measured fp32 peak (SGEMM 2048, {args.threads} threads): {peak:.0f} GFLOP/s; "
          f"load average {os.getloadavg()}", file=sys.stderr)
    results, rows = [], []
    for name in args.models:
        peak = max(peak, peak_gflops(args.threads))
        model, graph = load_model(name)
        feeds = input_feeds(model)
        print(f"[{name}] building", file=sys.stderr)
        start = time.perf_counter()
        executable, lowered = edgecnn_build(model, target)
        compile_s = time.perf_counter() - start
        peers = {"onnxruntime": ort_peer(model, feeds, args.threads),
                 "edgecnn": _vm_peer(executable, feeds)}
        torch_run = None if args.no_torch else torch_peer(graph, feeds, args.threads)
        if torch_run is not None:
            peers["pytorch"] = torch_run
        if args.tune_trials > 0:
            import tempfile

            from edgecnn.compiler.tvm import frontend, tuning

            with tempfile.TemporaryDirectory() as work:
                database = tuned_database(model, args.target, args.tune_trials, Path(work))
                # what `edgecnn compile --tune` ships: the tuned build only if it is faster whole
                tuned_exec, _, tuned_verdict = tuning.build_with_records(
                    frontend.to_relax(model), get_preset(args.target), database, feeds,
                    log=lambda m: print(m, file=sys.stderr))
            peers["edgecnn-tuned"] = _vm_peer(tuned_exec, feeds)
        reference = peers["onnxruntime"]()
        for peer, fn in peers.items():
            err = float(np.max(np.abs(fn() - reference)))
            scale = float(np.max(np.abs(reference))) + 1e-6
            if err > 1e-3 * scale + 1e-4:
                raise SystemExit(f"{name}: {peer} disagrees with onnxruntime (max abs error {err:.3g})")
        zero_note = None
        if not args.no_zero:
            zero = zero_peer(model, feeds, target)
            (one_call,) = time_calls(zero, 1)
            if one_call <= args.zero_max_s:
                peers["tvm-zero"] = zero
            else:
                zero_note = f"one call {one_call:.1f} s > --zero-max-s"
        # Peers are timed in groups, each interleaved with onnxruntime: PyTorch's OpenMP
        # threads and TVM's pool both spin after a call and, on 2 cores, steal the next
        # peer's cores, so putting them in one loop bills each for the other. The zero
        # pipeline (50-100x slower) gets one call per round, not a block.
        ort = peers["onnxruntime"]
        main_group = {k: v for k, v in peers.items() if k in ("onnxruntime", "edgecnn", "edgecnn-tuned")}
        samples = interleaved(main_group, rounds=args.rounds, calls=args.per_round)
        ort_by_peer = {k: samples["onnxruntime"] for k in main_group}
        if "pytorch" in peers:
            group = interleaved({"onnxruntime": ort, "pytorch": peers["pytorch"]}, rounds=args.rounds,
                                calls=args.per_round)
            samples["pytorch"], ort_by_peer["pytorch"] = group["pytorch"], group["onnxruntime"]
        if "tvm-zero" in peers:
            group = interleaved({"onnxruntime": ort, "tvm-zero": peers["tvm-zero"]},
                                rounds=max(2, args.rounds // 4), calls=2)
            samples["tvm-zero"], ort_by_peer["tvm-zero"] = group["tvm-zero"], group["onnxruntime"]
        flops = model_flops(lowered)
        p50 = {k: statistics.median(flatten(v)) for k, v in samples.items()}
        ratio = {k: paired_ratio(samples[k], ort_by_peer[k]) for k in p50 if k != "onnxruntime"}
        gflops = {k: flops / v / 1e9 for k, v in p50.items()}
        result = {"model": name, "gflop": flops / 1e9, "p50_ms": {k: v * 1e3 for k, v in p50.items()},
                  "ratio_to_onnxruntime": ratio, "gflops": gflops,
                  "fraction_of_peak": {k: v / peak for k, v in gflops.items()},
                  "edgecnn_compile_s": compile_s, "zero_skipped": zero_note,
                  "tuned": tuned_verdict if args.tune_trials > 0 else None,
                  "samples": {k: len(flatten(v)) for k, v in samples.items()}}
        if args.layers:
            library = function_library(lowered, target)
            layer_rows = layer_profile(lowered, library)
            in_model = layer_profile_in_model(lowered, library, feeds)
            for r in layer_rows:
                r["ms_alone"] = r["ms"]
                # a function the model never calls is a reshape the VM makes a view
                r["ms"] = in_model.get(r["function"], 0.0)
                r["ms_per_call"] = r["ms"] / r["calls"]
            total = sum(r["ms"] for r in layer_rows) or 1.0
            result["layers_total_ms"] = total
            for r in layer_rows:
                r["share"] = r["ms"] / total
                r["gflops"] = r["flops"] / (r["ms"] * 1e-3) / 1e9 if r["ms"] > 0 else 0.0
                r["fraction_of_peak"] = r["gflops"] / peak
            result["layers"] = sorted(layer_rows, key=lambda r: -r["ms"])
            # the per-layer bar: no layer under 50% of peak costing over 5% of the model
            result["slow_costly_layers"] = [
                r["function"] for r in layer_rows if r["share"] > 0.05 and r["fraction_of_peak"] < 0.5]
        results.append(result)
        row = {"model": name, "GFLOP": flops / 1e9, "ort ms": p50["onnxruntime"] * 1e3}
        for peer in ("pytorch", "tvm-zero", "edgecnn", "edgecnn-tuned"):
            if peer in p50:
                column = "pytorch-mirror" if peer == "pytorch" else peer
                row[f"{column} ms"] = p50[peer] * 1e3
                row[f"{column} x"] = ratio[peer]
        row["edgecnn GFLOP/s"] = gflops["edgecnn"]
        row["edgecnn %peak"] = 100 * gflops["edgecnn"] / peak
        row["ort %peak"] = 100 * gflops["onnxruntime"] / peak
        rows.append(row)
        print_table([row])
        if args.layers:
            print_table([{k: (round(v, 3) if isinstance(v, float) else v)
                          for k, v in r.items() if k != "flops"} for r in result["layers"][:8]])
        print(file=sys.stderr)
    columns = sorted({c for r in rows for c in r}, key=lambda c: list(rows[0]).index(c) if c in rows[0] else 99)
    print()
    print(f"batch 1, {args.threads} threads, target {args.target}; ratios are p50 over onnxruntime in the same run")
    if any("pytorch" in r["p50_ms"] for r in results):
        print(f"pytorch-mirror: {PEER_NOTES['pytorch']}")
    print_table(rows, columns)
    peak = max(peak, peak_gflops(args.threads))
    for result in results:  # fractions against the best ceiling seen during the whole run
        result["fraction_of_peak"] = {k: v / peak for k, v in result["gflops"].items()}
        for layer in result.get("layers", []):
            layer["fraction_of_peak"] = layer["gflops"] / peak
        if "layers" in result:
            result["slow_costly_layers"] = [l["function"] for l in result["layers"]
                                            if l["share"] > 0.05 and l["fraction_of_peak"] < 0.5]
    for row in rows:
        match = next(r for r in results if r["model"] == row["model"])
        row["edgecnn %peak"] = 100 * match["fraction_of_peak"]["edgecnn"]
        row["ort %peak"] = 100 * match["fraction_of_peak"]["onnxruntime"]
    print(f"fp32 peak used for the fractions: {peak:.0f} GFLOP/s (best SGEMM seen in the run)")
    edge_ratios = [r["ratio_to_onnxruntime"]["edgecnn"] for r in results]
    summary = {"median_ratio_edgecnn": statistics.median(edge_ratios), "max_ratio_edgecnn": max(edge_ratios)}
    print(f"edgecnn untuned: median ratio {summary['median_ratio_edgecnn']:.2f}, "
          f"worst {summary['max_ratio_edgecnn']:.2f}")
    path = write_result(args.name, {"threads": args.threads, "target": args.target, "peak_gflops": peak,
                                    "load_after": os.getloadavg(), "summary": summary, "models": results,
                                    "peers": {p: LABELS.get(p, p) for p in ("onnxruntime", "pytorch", "tvm-zero",
                                                                            "edgecnn", "edgecnn-tuned")},
                                    "peer_notes": PEER_NOTES,
                                    "tune_trials": args.tune_trials, "machine_at_start": machine()})
    png = path.with_suffix(".png")
    chart(results, png)
    print(f"wrote {path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

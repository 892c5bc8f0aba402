"""The bench's outputs: targets read off the results, results.json, results.md and PNG plots."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = {"ort_speedup": 2.0, "window_slope": 1.15, "ort_rss_ratio": 1.05, "bits_per_weight": 2.1}


def targets(results: dict) -> list[dict]:
    """Issue 5's targets, each with its figure and whether it is met (read at the plan's anchor)."""
    b, n, T = results["plan"]["anchor"]
    anchor = [r for r in results["latency"] if r["model"] == "reference" and (r["batch"], r["seq"], r["max_iters"],
              r["threads"]) == (b, n, T, 1) and "skipped" not in r]
    rows = [
        ("ORT speed-up over eager", f"reference, batch {b}, seq {n}, T {T}, 1 thread",
         anchor[0]["eager_over_ort"] if anchor else None, ">=", TARGETS["ort_speedup"]),
        ("sequence slope, window attention", f"log-log fit over seq {results['sequence']['rows'][0]['seq']}.."
         f"{results['sequence']['rows'][-1]['seq']}, T {results['sequence']['max_iters']}",
         results["sequence"]["window_slope"], "<=", TARGETS["window_slope"]),
        ("ORT peak RSS ratio across T", results["depth"]["ratio_label"], results["depth"]["onnxruntime_peak_ratio"],
         "<=", TARGETS["ort_rss_ratio"]),
        ("bits per packed BitLinear weight", "2-bit codes (4 per byte), padding included",
         results["size"]["bits_per_weight"], "<=", TARGETS["bits_per_weight"]),
    ]
    return [{"target": name, "where": where, "figure": fig, "goal": f"{op} {goal}",
             "met": fig is not None and (fig >= goal if op == ">=" else fig <= goal)}
            for name, where, fig, op, goal in rows]


def write(results: dict, out: Path) -> None:
    """results.json, results.md and the plots, into the directory `out` (which exists)."""
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot_latency(results, out / "latency.png")
    plot_depth(results, out / "depth.png")
    plot_sequence(results, out / "sequence.png")
    plot_early_exit(results, out / "early_exit.png")


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# depthscale-bench results ({results['plan']['name']} plan)", "",
             f"{meta['machine']}; {meta['date']}; torch {meta['versions']['torch']}, onnxruntime "
             f"{meta['versions']['onnxruntime']}; bench took {meta['seconds']:.0f} s. Command: `{meta['command']}`", "",
             "## Targets", "", "| target | where | figure | goal | met |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        fig = "n/a" if t["figure"] is None else f"{t['figure']:.3f}"
        lines.append(f"| {t['target']} | {t['where']} | {fig} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "## a. Latency (medians of interleaved repetitions, tol 0: every token runs all T iterations)", "",
              "| model | batch | seq | T | threads | eager ms | ORT ms | eager / ORT | ORT tokens/s | logits max diff | iterations equal |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["latency"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['seq']} | {r['max_iters']} | {r['threads']} | "
                         f"skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['batch']} | {r['seq']} | {r['max_iters']} | {r['threads']} | "
                     f"{_ms(r['eager_median_s'])} | {_ms(r['ort_median_s'])} | {r['eager_over_ort']:.2f} | "
                     f"{r['ort_tokens_per_s']:,.0f} | {r['logits_max_abs_diff']:.1e} | {r['iterations_equal']} |")
    d = results["depth"]
    lines += ["", f"## b. Depth: peak RSS of a fresh process (batch {d['batch']}, seq {d['seq']}, 1 thread)", "",
              "| backend | T | peak RSS MiB | RSS after load MiB | run s |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['backend']} | {r['max_iters']} | {r['peak_rss_mib']:.1f} | {r['rss_after_load_mib']:.1f} | "
                     f"{r['run_s']:.2f} |")
    lines.append(f"\n{d['ratio_label']}: eager {d['eager_peak_ratio']:.3f}, ONNX Runtime {d['onnxruntime_peak_ratio']:.3f}")
    s = results["sequence"]
    lines += ["", f"## c. Sequence length (ONNX Runtime, batch 1, T {s['max_iters']}, 1 thread)", "",
              "| seq | window attention ms | full attention ms | full / window |", "|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['seq']} | {_ms(r['window_median_s'])} | {_ms(r['full_median_s'])} | "
                     f"{r['full_median_s'] / r['window_median_s']:.2f} |")
    lines.append(f"\nlog-log slope: window {s['window_slope']:.3f} (pairwise "
                 f"{', '.join(f'{x:.2f}' for x in s['window_pairwise_slopes'])}), full {s['full_slope']:.3f} "
                 f"(pairwise {', '.join(f'{x:.2f}' for x in s['full_pairwise_slopes'])})")
    z = results["size"]
    caps = ", ".join(f"T cap {c}: {b:,} B" for c, b in z["onnx_bytes_by_cap"].items())
    lines += ["", "## d. Size", "", f"- model.onnx by T cap: {caps} (ratio {z['onnx_bytes_ratio_largest_over_smallest_cap']:.4f})",
              f"- BitLinear: {z['bitlinear_weights']:,} weights in {z['bitlinear_tensors']} tensors, {z['packed_bytes']:,} B "
              f"packed: **{z['bits_per_weight']:.3f} bits per weight** ({z['bits_per_weight_with_scales']:.4f} with the "
              f"float32 scales)",
              f"- artifact {z['artifact_bytes']:,} B (model.onnx {z['onnx_bytes']:,} B) against the float32 checkpoint "
              f"{z['checkpoint_fp32_bytes']:,} B: **{z['artifact_over_checkpoint']:.3f}x**",
              "- model.onnx initializers by dtype: " + ", ".join(f"{k} {v:,} B" for k, v in z["onnx_initializer_bytes_by_dtype"].items())]
    u = results["unrolled"]
    lines += ["", f"## e. Loop against unrolled (T {u['steps']}, batch 1, seq {u['seq']}, 1 thread, ONNX Runtime)", "",
              "| form | model.onnx bytes | nodes | export s | session creation s | latency ms |", "|---|---|---|---|---|---|"]
    for k in ("loop", "unrolled"):
        r = u[k]
        lines.append(f"| {k} | {r['onnx_bytes']:,} | {r['nodes']:,} | {r['export_s']:.1f} | {r['session_create_median_s']:.2f} | "
                     f"{_ms(r['latency_median_s'])} |")
    lines.append(f"\nunrolled / loop: bytes {u['unrolled_over_loop_onnx_bytes']:.2f}x, session creation "
                 f"{u['unrolled_over_loop_session_create_median_s']:.2f}x, latency {u['unrolled_over_loop_latency_median_s']:.2f}x; "
                 f"identical outputs: {u['same_outputs']}")
    e = results["early_exit"]
    lines += ["", f"## f. Early exit (demo model, {e['task']} task, {e['batch']} examples x {e['seq']} tokens, T cap "
              f"{e['max_iters']}, ONNX Runtime, 1 thread; latency per request over {e['requests_timed']} requests of "
              f"one example)", "",
              "| tol | accuracy | mean exit iteration | max exit iteration | Loop iterations per request | ms per request | "
              "speed-up over tol 0 |", "|---|---|---|---|---|---|---|"]
    for r in e["rows"]:
        lines.append(f"| {r['tol']:g} | {r['accuracy']:.4f} | {r['mean_exit_iteration']:.2f} | {r['max_exit_iteration']} | "
                     f"{r['mean_loop_iterations_per_request']:.2f} | {r['latency_per_request_s'] * 1e3:.2f} | "
                     f"{r['speedup_over_tol0']:.2f} |")
    g = results["machine_limit"]
    m = g["model"]
    lines += ["", "## g. The machine's limit (ONNX Runtime, X [m, k] · constant W [k, n]; each product's fastest repetition, the best product counts)", "",
              "| threads | m x k x n | int8 GOPS (uint8 x int8) | float32 GFLOPS |", "|---|---|---|---|"]
    for t, p in g["peak_by_threads"].items():
        for r in p["products"]:
            lines.append(f"| {t} | {r['m']} x {r['k']} x {r['n']} | {r['int8_ops_per_s'] / 1e9:,.0f} | "
                         f"{r['fp32_ops_per_s'] / 1e9:,.0f} |")
        lines.append(f"| {t} | **best** | **{p['int8_ops_per_s'] / 1e9:,.0f}** | **{p['fp32_ops_per_s'] / 1e9:,.0f}** |")
    lines += ["", f"The reference model at batch {m['batch']}, seq {m['seq']}, T {m['max_iters']}, 1 thread (one profiled run, "
              f"{m['profiled_run_s']:.3f} s): {m['bitlinear_ops'] / 1e9:,.3g} G BitLinear integer ops; inside MatMulInteger "
              f"{m['matmulinteger_ops_per_s'] / 1e9:,.0f} GOPS = **{m['matmulinteger_fraction_of_int8_peak']:.0%} of the int8 "
              f"peak**; end to end {m['end_to_end_bitlinear_ops_per_s'] / 1e9:,.0f} GOPS = "
              f"{m['end_to_end_fraction_of_int8_peak']:.0%}.", "", "Time by op type (share of kernel time): "
              + ", ".join(f"{op} {share:.0%}" for op, share in list(m["time_share_by_op"].items())[:12])]
    return "\n".join(lines) + "\n"


@contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str, size=(5, 3.5), legend=(0.12, 0.88)):
    """Yields the axes of a new figure; saves it as PNG to `path` with title, labels and the legend's
    upper-left corner at `legend` (figure coordinates)."""
    fig, ax = plt.subplots(figsize=size)
    yield ax
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.legend(loc="upper left", bbox_to_anchor=legend, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict, path: Path) -> None:
    rows = [r for r in results["latency"] if "skipped" not in r]
    with _figure(path, "a. Latency, eager against ONNX Runtime (CPU)", "", "median latency (ms, log)",
                 size=(11, 4.5)) as ax:
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["eager_median_s"] * 1e3 for r in rows], width=0.4, label="eager PyTorch")
        ax.bar([i + 0.2 for i in x], [r["ort_median_s"] * 1e3 for r in rows], width=0.4, label="ONNX Runtime")
        ax.set_yscale("log")
        ax.set_xticks(list(x), [f"{r['model'][:4]} b{r['batch']} s{r['seq']} T{r['max_iters']} {r['threads']}t"
                                for r in rows], rotation=70, ha="right", fontsize=7)


def plot_depth(results: dict, path: Path) -> None:
    d = results["depth"]
    with _figure(path, "b. Memory is flat in depth", "T (iterations)", "peak RSS (MiB)") as ax:
        for backend in ("eager", "onnxruntime"):
            rows = [r for r in d["rows"] if r["backend"] == backend]
            ax.plot([r["max_iters"] for r in rows], [r["peak_rss_mib"] for r in rows], "o-", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)


def plot_sequence(results: dict, path: Path) -> None:
    s = results["sequence"]
    with _figure(path, f"c. Latency against length (T {s['max_iters']})", "sequence length",
                 "ORT latency (s)") as ax:
        seqs = [r["seq"] for r in s["rows"]]
        ax.loglog(seqs, [r["window_median_s"] for r in s["rows"]], "o-", base=2,
                  label=f"window attention (slope {s['window_slope']:.2f})")
        ax.loglog(seqs, [r["full_median_s"] for r in s["rows"]], "s-", base=2,
                  label=f"full attention (slope {s['full_slope']:.2f})")


def plot_early_exit(results: dict, path: Path) -> None:
    e = results["early_exit"]
    tols = [max(r["tol"], 1e-4) for r in e["rows"]]
    with _figure(path, f"f. Early exit on the demo ({e['task']})", "tol (tol 0 drawn at 1e-4)",
                 "mean exit iteration", legend=(0.14, 0.45)) as ax:
        ax.semilogx(tols, [r["mean_exit_iteration"] for r in e["rows"]], "o-", label="mean exit iteration")
        ax2 = ax.twinx()
        ax2.semilogx(tols, [r["accuracy"] for r in e["rows"]], "s--", color="C1", label="accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1.02)

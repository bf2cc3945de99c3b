#!/usr/bin/env python
"""Turn the benchmark JSON files into benchmarks/RESULTS.md with PNG plots.

Reads whatever is present in the results folder (default benchmarks/results/):

- ``mnist.json`` (benchmarks/mnist_gmvae.py): concrete vs exact on MNIST;
- ``k_scaling.json`` and ``k_scaling_concrete.json`` (benchmarks/k_scaling.py);
- ``peers.json`` (benchmarks/peers.py): GaussianMixture and KMeans on MNIST and the tabular sets, and
  both GMVAE estimators on the tabular sets;
- ``scale.json`` (benchmarks/scale.py): the pipeline steps at 100k / 1M / 5M synthetic customers;
- ``roofline.json`` (benchmarks/roofline.py);
- ``scoring_memory.json``, ``validation_overhead.json``, ``nights.json`` (listed with their headline).

and writes the Markdown page (default benchmarks/RESULTS.md) and its plots (PNG, matplotlib's Agg
backend) next to the JSON. A missing file gives a "not run" line with the command that makes it,
never an error. Every table says which command, seeds, library versions, machine and date its
numbers come from (the JSON ``machine`` blocks). Nothing is measured here.

    python benchmarks/results_md.py
    python benchmarks/results_md.py --results benchmarks/out/quick --out benchmarks/out/quick/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

TARGETS = {
    "k200": "Concrete epoch at K=200 within 1.2x of K=2",
    "k20": "exact/concrete time >= 8x at K=20",
    "acc": "concrete MNIST accuracy >= 0.83 (mean over seeds)",
    "ari": "concrete ARI >= GaussianMixture's on at least half the tabular sets",
    "1m": "1M customers end to end under 10 minutes on 2 CPU cores",
    "roof": "training at >= 30% of the roofline (MNIST benchmark network)",
    "roof_crm": "training at >= 30% of the roofline (synthetic CRM network of the scale run)",
}


# ---------------------------------------------------------------------------------------------
# small formatting helpers
# ---------------------------------------------------------------------------------------------
# result files found but unreadable (truncated, not JSON, not an object), and sections that could
# not be rendered: named on the page and in the exit status, never shown as "not run yet"
PROBLEMS: dict[str, str] = {}


def load(results: Path, name: str) -> dict[str, Any] | None:
    p = results / name
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (ValueError, OSError) as exc:
        PROBLEMS[name] = f"{p} is not readable JSON ({exc}); rerun the benchmark that writes it"
        return None
    if not isinstance(data, dict):
        PROBLEMS[name] = f"{p} holds a {type(data).__name__}, not a benchmark result object"
        return None
    return data


def f(v: Any, d: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:,.{d}f}"


def ms(s: dict[str, Any] | None, d: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{d}f} ± {s['sd']:.{d}f}" if s.get("n", 1) > 1 else f"{s['mean']:.{d}f}"


def versions_text(machine: dict[str, Any] | None) -> str:
    if not machine:
        return "versions not recorded"
    v = machine.get("versions") or {}
    keep = ["torch", "numpy", "pandas", "scikit-learn", "scipy", "duckdb", "pyarrow", "great-expectations",
            "postgresql-server"]
    return ", ".join(f"{k} {v[k]}" for k in keep if v.get(k))


def machine_text(machine: dict[str, Any] | None) -> str:
    if not machine:
        return "machine not recorded"
    cpu = machine.get("cpu_model") or "unknown CPU"
    n = machine.get("logical_cpus") or machine.get("cpus")
    load = machine.get("load_average_at_start") or machine.get("load_average")
    mem = f", {machine['memory_gb']} GB RAM" if machine.get("memory_gb") else ""
    parts = [f"{cpu} ({n} logical CPUs{mem})" if n else cpu]
    if machine.get("torch_threads"):
        parts.append(f"{machine['torch_threads']} torch thread(s)")
    if load:
        parts.append(f"load average at start {load[0]}")
    return ", ".join(parts)


def provenance(d: dict[str, Any] | None, seeds: Any = None,
               only: tuple[str, ...] = ("command", "run", "seeds", "machine", "versions")) -> str:
    """One block naming command, date, seeds, versions, machine and commit of a result file (or only
    the lines named in ``only``)."""
    if not d:
        return ""
    m = d.get("machine") or {}
    when = d.get("started_utc") or d.get("at") or "date not recorded"
    if d.get("finished_utc"):
        when = f"{when} to {d['finished_utc']}"
    seeds = seeds if seeds is not None else d.get("seeds")
    lines = {
        "command": f"- command: `{d.get('command', 'not recorded')}`",
        "run": f"- run: {when}" + (f", {d['total_wall_seconds']:,.0f} s wall" if d.get("total_wall_seconds") else ""),
        "seeds": f"- seeds: {seeds if seeds is not None else 'n/a'}",
        "machine": f"- machine: {machine_text(m)}",
        # the commit belongs to the run: a block that borrows only machine and versions leaves it out
        "versions": f"- versions: {versions_text(m)}"
                    + (f"; git {m['git_commit'][:10]}" if m.get("git_commit") and "run" in only else ""),
    }
    return "\n".join(lines[k] for k in only) + "\n"


def seeds_of(entry: dict[str, Any] | None) -> list[int] | str:
    """The seeds a data set's runs used (a merged peers file can hold data sets run with other seeds)."""
    got = sorted({r["seed"] for r in (entry or {}).get("runs", []) if isinstance(r, dict) and "seed" in r})
    return got or "n/a"


def measured_by(entry: dict[str, Any] | None) -> str:
    """The line naming which run measured one data set of a merged result file (peers.py --merge)."""
    mb = (entry or {}).get("measured_by")
    if not mb:
        return ""
    dirty = mb.get("uncommitted_library_files")
    return (f"measured by `{mb.get('command')}` from {mb.get('started_utc')}, git {str(mb.get('git_commit'))[:10]}"
            + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else ""))


class Page:
    def __init__(self, out: Path, plots: Path) -> None:
        self.out, self.plots, self.lines, self.images = out, plots, [], []

    def add(self, *text: str) -> None:
        self.lines.extend(text)

    def image(self, name: str, alt: str) -> None:
        rel = os.path.relpath(self.plots / name, self.out.parent)
        self.add(f"![{alt}]({rel})", "")
        self.images.append(self.plots / name)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


GUMBEL_AND_INDICATOR_FIX = "c3d0400"  # engine: Gumbel noise from uniforms; missing indicators only where needed


def measured_before(d: dict[str, Any] | None, commit: str) -> bool | None:
    """True when the result's recorded git commit does not contain ``commit`` (None: unknown)."""
    import subprocess

    rec = ((d or {}).get("machine") or {}).get("git_commit")
    if not rec:
        return None
    try:
        r = subprocess.run(["git", "-C", str(HERE.parent), "merge-base", "--is-ancestor", commit, rec],
                           capture_output=True, timeout=10)
    except Exception:  # noqa: BLE001
        return None
    return {0: False, 1: True}.get(r.returncode)


def _missing(page: Page, what: str, cmd: str) -> None:
    bad = [v for k, v in PROBLEMS.items() if k in what]
    if bad:
        page.add(f"_Unreadable: {'; '.join(bad)}. Make it again with `{cmd}`._", "")
        return
    page.add(f"_Not run yet: no {what} in the results folder. Make it with `{cmd}`._", "")


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def section_k_scaling(page: Page, res: Path, targets: dict[str, Any]) -> None:
    page.add("## 1. K-scaling: seconds per epoch and per step, concrete vs exact", "")
    ks = load(res, "k_scaling.json")
    kc = load(res, "k_scaling_concrete.json")
    if not ks:
        _missing(page, "k_scaling.json", "python benchmarks/k_scaling.py")
        return
    cfg = ks.get("config", {})
    page.add(
        f"Same data and network for every K: binarised MNIST, {ks.get('data', {}).get('n_train', 'n/a')} rows, "
        f"hidden {cfg.get('hidden')}, latent {cfg.get('latent_dim')}, batch {cfg.get('batch_size')}, "
        f"validation_fraction {cfg.get('validation_fraction')}; {cfg.get('epochs')} epochs per fit, "
        f"{cfg.get('statistic', 'median')}. FLOPs: one training step under FlopCounterMode "
        "(matrix products only).", "",
        provenance(ks, [cfg.get("seed")]),
    )
    wanted = [2, 5, 10, 20, 50, 100, 200]
    have = [p["k"] for p in ks["per_k"]]
    missing = [k for k in wanted if k not in have]
    page.add("| K | concrete s/epoch | exact s/epoch | concrete ms/step | exact ms/step | exact/concrete time "
             "| concrete GFLOP/step | exact GFLOP/step | exact/concrete FLOPs |",
             "|---|---|---|---|---|---|---|---|---|")
    for p in ks["per_k"]:
        page.add(f"| {p['k']} | {f(p.get('concrete_seconds_per_epoch'))} | {f(p.get('exact_seconds_per_epoch'))} | "
                 f"{f(p.get('concrete_ms_per_step'), 2)} | {f(p.get('exact_ms_per_step'), 2)} | "
                 f"{f(p.get('exact_over_concrete_seconds'), 2)}x | {f((p.get('concrete_flops_per_step') or 0) / 1e9)} | "
                 f"{f((p.get('exact_flops_per_step') or 0) / 1e9)} | {f(p.get('exact_over_concrete_flops'), 2)}x |")
    page.add("")
    if missing:
        chosen = "--ks" in str(ks.get("command"))
        page.add(f"K = {', '.join(map(str, missing))} of the issue's list {{2, 5, 10, 20, 50, 100, 200}} are not in "
                 "this file" + (": the run chose its K with --ks." if chosen else
                                ": it was written before the default K list grew. `python benchmarks/k_scaling.py` "
                                "(about 15 minutes) fills them in."), "")
    conc_rows = None
    if kc:
        conc_rows = kc["per_k"]
        page.add(f"Concrete alone, timed over more epochs ({kc['config'].get('epochs')} per K) because the 3-epoch "
                 "medians above are noisy on a shared machine:", "", provenance(kc, [kc['config'].get('seed')]),
                 "| K | " + " | ".join(str(p["k"]) for p in conc_rows) + " |",
                 "|---|" + "---|" * len(conc_rows),
                 "| concrete s/epoch | " + " | ".join(f(p.get("concrete_seconds_per_epoch")) for p in conc_rows) + " |",
                 "| concrete ms/step | " + " | ".join(f(p.get("concrete_ms_per_step"), 2) for p in conc_rows) + " |",
                 "")
    # targets
    r = ks.get("ratios", {})
    lo, hi = min(have), max(have)
    main_ratio = r.get("concrete_seconds_kmax_over_kmin")
    alt_ratio = (kc or {}).get("ratios", {}).get("concrete_seconds_kmax_over_kmin")
    flops_ratio = r.get("concrete_flops_kmax_over_kmin")
    if main_ratio is not None and lo == 2 and hi == 200:
        vals = [v for v in (main_ratio, alt_ratio) if v is not None]
        best = min(vals)
        targets["k200"] = {
            "measured": " and ".join(f"{v:.3f}x" for v in vals) + f" (by FLOPs {flops_ratio:.3f}x)",
            "met": all(v <= 1.2 for v in vals),
            "by": None if all(v <= 1.2 for v in vals) else
            f"{100 * (max(vals) - 1.2) / 1.2:.1f}% over in the {len(vals)}-epoch run" if len(vals) == 1 else
            f"{100 * (max(vals) - 1.2) / 1.2:.1f}% over in the 4-epoch run; the 11-epoch run: {best:.3f}x",
            "source": "k_scaling.json" + (", k_scaling_concrete.json" if alt_ratio else ""),
            "why": f"The matrix products alone grow {flops_ratio:.2f}x from K=2 to K=200 (FlopCounterMode). The rest is "
                   "K-sized elementwise work the FLOP counter does not see, chiefly drawing the Gumbel noise for "
                   "the [batch, K] logits"
                   + (" (this file was measured before commit c3d0400, when `F.gumbel_softmax` drew it with "
                      "`exponential_`: about 1 ms of a 17-20 ms step at K=200, benchmarks/README.md Finding 3; the "
                      "engine now draws it from uniforms, 3x cheaper: rerun k_scaling.py)"
                      if measured_before(ks, GUMBEL_AND_INDICATOR_FIX) else "")
                   + ". Timing noise on the shared 2-core machine is of the same size as the margin.",
        }
    k20 = r.get("exact_over_concrete_seconds_at_k20")
    if k20 is not None:
        p20 = next(p for p in ks["per_k"] if p["k"] == 20)
        targets["k20"] = {
            "measured": f"{k20:.2f}x by time, {p20.get('exact_over_concrete_flops', float('nan')):.2f}x by FLOPs",
            "met": k20 >= 8.0, "by": None if k20 >= 8.0 else f"{100 * (8.0 - k20) / 8.0:.1f}% short ({k20:.2f}x vs 8x)",
            "source": "k_scaling.json",
            "why": f"The time ratio ({k20:.2f}x) is below the FLOP ratio "
                   f"({p20.get('exact_over_concrete_flops', float('nan')):.2f}x): per-step work outside the matrix "
                   "products (Adam, gradient clipping, autograd and Python dispatch) is the same for both estimators "
                   "and dilutes the ratio. The FLOP ratio itself is capped by the K-independent encoder both run "
                   "once per row"
                   + (", in this file 1568 columns wide (784 pixels plus 784 all-zero missing-value indicators, "
                      "benchmarks/README.md Finding 4; commit c3d0400 dropped the indicators since, which should raise "
                      "both ratios: rerun k_scaling.py)" if measured_before(ks, GUMBEL_AND_INDICATOR_FIX) else "")
                   + ".",
        }
    # plot
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for est, style in (("concrete", "o-"), ("exact", "s-")):
        pts = [(p["k"], p[f"{est}_seconds_per_epoch"]) for p in ks["per_k"] if p.get(f"{est}_seconds_per_epoch")]
        if pts:
            axes[0].plot(*zip(*pts), style, label=f"{est} (k_scaling.json)")
    if conc_rows:
        pts = [(p["k"], p["concrete_seconds_per_epoch"]) for p in conc_rows if p.get("concrete_seconds_per_epoch")]
        axes[0].plot(*zip(*pts), "o--", label="concrete (k_scaling_concrete.json)")
    axes[0].set(xscale="log", yscale="log", xlabel="K (segments)", ylabel="seconds per epoch",
                title="training time per epoch (1 thread)")
    axes[0].legend()
    pts = [(p["k"], p["exact_over_concrete_seconds"]) for p in ks["per_k"] if p.get("exact_over_concrete_seconds")]
    ptf = [(p["k"], p["exact_over_concrete_flops"]) for p in ks["per_k"] if p.get("exact_over_concrete_flops")]
    if pts:
        axes[1].plot(*zip(*pts), "o-", label="by time")
    if ptf:
        axes[1].plot(*zip(*ptf), "s--", label="by FLOPs (matmul)")
    axes[1].axhline(8, color="grey", lw=0.8, ls=":", label="8x (paper, K=20)")
    axes[1].set(xscale="log", yscale="log", xlabel="K (segments)", ylabel="exact / concrete",
                title="exact / concrete cost ratio")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(page.plots / "k_scaling.png", dpi=110)
    plt.close(fig)
    page.image("k_scaling.png", "K-scaling: seconds per epoch and exact/concrete ratio")


def mnist_start_words(mn: dict[str, Any]) -> str | None:
    """The MNIST run's data-driven start and training settings in words (None for a random start)."""
    cfg = mn.get("config") or {}
    if cfg.get("init") != "pretrain":
        return None
    start = cfg.get("start_clusters", "kmeans")
    fits = "20" if cfg.get("prior_covariance") else "10"  # runs before the full prior used 10 fits
    start_words = f"the consensus of {fits} full-covariance mixtures" if start == "gmm" else "k-means"
    commit = (mn.get("machine") or {}).get("git_commit") or "?"
    return (f"the data-driven start (init='pretrain': {cfg.get('pretrain_epochs')} epochs of an autoencoder with "
            f"{100 * float(cfg.get('pretrain_noise') or 0):.0f}% of the pixels masked, then {start_words} on its "
            f"latent means; encoder {cfg.get('hidden')}; learning rate "
            f"{cfg.get('finetune_learning_rate') or cfg.get('learning_rate')} after the start; "
            f"{cfg.get('prior_covariance', 'diagonal')} covariance for each segment's p(z|y); git {commit[:7]})")


def section_quality(page: Page, res: Path, targets: dict[str, Any]) -> None:
    page.add("## 2. Quality against peers on the same preprocessed data", "")
    mn = load(res, "mnist.json")
    pe = load(res, "peers.json")
    page.add("Peers (scikit-learn `GaussianMixture` with diagonal and full covariance, `KMeans`) are fitted on the "
             "encoder input of the library's own fitted `TablePreprocessor`: the same rows, the same encoding "
             "(standardised numbers, log-scaled counts and money, one-hot categories, missing-value indicators), "
             "columns constant on the fit rows dropped.", "")
    pm0 = (pe or {}).get("results", {}).get("mnist")
    split = (f"{pm0['data']['n_train']:,} fit rows, {pm0['data']['n_test']:,} held-out rows" if pm0
             else "8,000 fit rows, 2,000 held-out rows")
    page.add(f"### MNIST (binarised, {split}, K=10)", "")
    if not mn and not (pe and "mnist" in pe.get("results", {})):
        _missing(page, "mnist.json or peers.json", "python benchmarks/mnist_gmvae.py; python benchmarks/peers.py")
    else:
        page.add("| method | accuracy | NMI | ARI | held-out log-likelihood | fit s | seeds | source |",
                 "|---|---|---|---|---|---|---|---|")
        if mn:
            for est, s in mn.get("summary", {}).items():
                page.add(f"| GMVAE {est} | {ms(s['hungarian_accuracy'])} | {ms(s['nmi'])} | {ms(s['ari'])} | "
                         f"{ms(s['iw_log_likelihood'], 2)} (IW, {mn.get('iw_samples')} samples: log p(x), nats) | "
                         f"{ms(s['train_seconds'], 1)} | {mn.get('seeds')} | mnist.json |")
        pm = (pe or {}).get("results", {}).get("mnist")
        if pm:
            names = {"gmm_diag": "GaussianMixture diag", "gmm_full": "GaussianMixture full", "kmeans": "KMeans"}
            for meth, s in pm["summary"].items():
                ll = ms(s["log_likelihood"], 1) + " (density of x, not comparable)" if "log_likelihood" in s else "n/a"
                page.add(f"| {names.get(meth, meth)} | {ms(s['hungarian_accuracy'])} | {ms(s['nmi'])} | {ms(s['ari'])} | "
                         f"{ll} | {ms(s['fit_seconds'], 1)} | {seeds_of(pm)} | peers.json |")
        page.add("")
        page.add("Held-out log-likelihoods are not comparable across model families: the GMVAE's is log p(x) of the "
                 "784 binary pixels under its Bernoulli decoder (a probability, at most 0), GaussianMixture's is a "
                 "log density of the encoded vector (continuous, unbounded above on 0/1 data). KMeans has none.", "")
        if mn:
            page.add("GMVAE rows:", "", provenance(mn))
            start = mnist_start_words(mn)
            if start:
                page.add(f"Configuration: {start}. How it was chosen, and what a longer pretraining costs in "
                         "held-out log-likelihood, is in benchmarks/README.md ('Longer pretraining, and what did "
                         "not help').", "")
        if pm and measured_by(pm):
            # peers.json merges runs: its own command and dates are those of its last run (the tabular
            # sets), so the MNIST rows name the run that measured them and borrow only machine and versions
            page.add(f"Peer rows: {measured_by(pm)}; seeds {seeds_of(pm)}. Machine and versions are those "
                     "of peers.json's last run:", "",
                     provenance(pe, seeds=seeds_of(pm), only=("machine", "versions")))
        elif pm:
            page.add("Peer rows:", "", provenance(pe, seeds=seeds_of(pm)))
        if mn and "concrete" in mn.get("summary", {}):
            acc = mn["summary"]["concrete"]["hungarian_accuracy"]["mean"]
            km = (pm or {}).get("summary", {}).get("kmeans", {}).get("hungarian_accuracy", {}).get("mean")
            init = (mn.get("config") or {}).get("init")
            commit = (mn.get("machine") or {}).get("git_commit", "?")[:7]
            if init == "pretrain":
                why = (f"Measured with {mnist_start_words(mn)}. "
                       "benchmarks/README.md ('A denoising start and a mixture consensus') has the seed-level experiments behind "
                       "it: the final accuracy follows the start's within a few points, and the start is limited "
                       "by how well 8,000 binarised digits (../shared/data holds the 10,000-image MNIST test file, "
                       "split 8,000 / 2,000) train an MLP autoencoder, with no convolution and no augmentation"
                       + (f"; KMeans on the encoded pixels gets {km:.3f} on the peers' split" if km else "") + ".")
            else:
                why = (f"With the engine this file was measured on (git {commit}, random start), the tuning in "
                       "benchmarks/README.md (Tuning, Engine experiments) found no setting of this model family at "
                       "K=10 on 8,000 rows above about 0.6; even k-means or a GMM on the learnt latent space reach only "
                       "0.58-0.68" + (f", and KMeans on the encoded pixels gets {km:.3f} here" if km else "")
                       + ". That engine lacked a data-driven start (pretraining and initialising the prior means from "
                         "the data), a free-bits / minimum-information term and more data.")
            targets["acc"] = {
                "measured": f"{ms(mn['summary']['concrete']['hungarian_accuracy'])} "
                            f"({len(mn.get('seeds', []))} seed{'s' if len(mn.get('seeds', [])) != 1 else ''})",
                "met": acc >= 0.83,
                "by": None if acc >= 0.83 else f"{0.83 - acc:.3f} short ({100 * (0.83 - acc) / 0.83:.0f}% below 0.83)",
                "source": "mnist.json",
                "why": why,
            }
    # tabular
    page.add("### Labelled tabular sets (K = number of label classes, fitted on all rows without the label)", "")
    tab = (pe or {}).get("results", {}).get("tabular", {})
    if not tab:
        _missing(page, "peers.json with tabular sets", "python benchmarks/peers.py")
        return
    page.add("The labels are weak ground truth for customer segments: income band (adult), whether a deposit was "
             "subscribed (bank marketing) and churn (telco) are single outcomes, and a segmentation that describes "
             "customers well can cut across them; only penguins' species is a natural cluster label. "
             "Read these ARI/NMI values as agreement with one outcome, not as segment quality.", "",
             provenance(pe, seeds="per data set, below"))
    names = {"concrete": "GMVAE concrete", "exact": "GMVAE exact", "gmm_diag": "GaussianMixture diag",
             "gmm_full": "GaussianMixture full", "kmeans": "KMeans"}
    order = ["concrete", "exact", "gmm_diag", "gmm_full", "kmeans"]
    page.add("| data set | rows | K | encoded columns | " + " | ".join(f"{names[m]} ARI" for m in order) + " |",
             "|---|---|---|---|" + "---|" * len(order))
    for ds, r in tab.items():
        s = r["summary"]
        page.add(f"| {ds} | {r['rows']:,} | {r['k']} | {r['encoded_columns']} | "
                 + " | ".join(ms(s[m]["ari"]) if m in s else "n/a" for m in order) + " |")
    page.add("", "| data set | " + " | ".join(f"{names[m]} NMI" for m in order) + " |", "|---|" + "---|" * len(order))
    for ds, r in tab.items():
        s = r["summary"]
        page.add(f"| {ds} | " + " | ".join(ms(s[m]["nmi"]) if m in s else "n/a" for m in order) + " |")
    page.add("", "| data set | " + " | ".join(f"{names[m]} fit s" for m in order) + " | GMVAE epochs (concrete / exact) |",
             "|---|" + "---|" * (len(order) + 1))
    for ds, r in tab.items():
        s = r["summary"]
        ep = " / ".join(ms(s[m].get("epochs_run"), 0) if m in s else "n/a" for m in ("concrete", "exact"))
        page.add(f"| {ds} | " + " | ".join(ms(s[m]["fit_seconds"], 1) if m in s else "n/a" for m in order) + f" | {ep} |")
    page.add("")
    for ds, r in tab.items():
        page.add(f"- {ds}: {r['description']}; label classes {r['label_classes']}; seeds {seeds_of(r)}"
                 + (f"; {measured_by(r)}" if measured_by(r) else ""))
    page.add("")
    tg = pe.get("targets", {})
    parts, met_all = [], []
    for g in ("gmm_diag", "gmm_full"):
        t = tg.get(f"concrete_ari>={g}_on_at_least_half")
        if t:
            parts.append(f"{t['wins']} of {t['sets']} sets vs {names[g]}")
            met_all.append(t["met"])
    if parts:
        losses = [f"{ds} ({v['concrete_ari']:.3f} vs diag {v.get('gmm_diag_ari', float('nan')):.3f} / full "
                  f"{v.get('gmm_full_ari', float('nan')):.3f})" for ds, v in tg.get("per_set", {}).items()
                  if not all(v.get(f"concrete>={g}", True) for g in ("gmm_diag", "gmm_full"))]
        targets["ari"] = {
            "measured": "; ".join(parts), "met": all(met_all),
            "by": None if all(met_all) else "fewer than half the sets: " + ", ".join(losses),
            "source": "peers.json",
            "why": "Where the concrete GMVAE loses, see the per-set ARI above: with K=2 against a binary outcome label "
                   "ARI mostly measures whether the first split happens to follow that outcome (weak ground truth)."
                   if not all(met_all) else "",
        }
    # plot
    plt = _plt()
    import numpy as np

    fig, ax = plt.subplots(figsize=(10, 4))
    dsn = list(tab)
    width = 0.8 / len(order)
    for i, m in enumerate(order):
        vals = [tab[d]["summary"].get(m, {}).get("ari", {}).get("mean") for d in dsn]
        sds = [tab[d]["summary"].get(m, {}).get("ari", {}).get("sd") for d in dsn]
        xs = np.arange(len(dsn)) + i * width
        ax.bar(xs, [v if v is not None else 0 for v in vals], width, yerr=[s or 0 for s in sds], label=names[m], capsize=2)
    ax.set_xticks(np.arange(len(dsn)) + 0.4 - width / 2, dsn)
    ax.set(ylabel="ARI against the label (mean ± sd over seeds)", title="Tabular sets: agreement with the label")
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(page.plots / "quality_tabular.png", dpi=110)
    plt.close(fig)
    page.image("quality_tabular.png", "ARI on the tabular sets")


STEP_LABELS = [("extract", "extract"), ("features", "features (SQL + snapshot)"), ("validate", "validate"),
               ("train", "train"), ("score", "score (streaming)"), ("score_whole", "score (whole table)"),
               ("publish_duckdb", "publish DuckDB"), ("publish_postgres", "publish PostgreSQL")]


def section_scale(page: Page, res: Path, targets: dict[str, Any]) -> None:
    page.add("## 3. Scale: a synthetic CRM at 100k, 1M and 5M customers", "")
    sc = load(res, "scale.json")
    if not sc:
        _missing(page, "scale.json", "python benchmarks/scale.py")
        return
    cfg = sc.get("config", {})
    page.add(
        "`benchmarks/crm_synth.py` writes a raw `customers` table with 8 planted segments (personas from 30 % down "
        "to 3 % of rows), heavy-tailed money (log-normal spend with a Pareto tail), negative-binomial and "
        "zero-inflated counts, first/last-purchase timestamps, 60 countries with a Zipf tail plus levels never seen "
        "before, and missing values (no e-mail on file, no order so no order value, unknown channel). A SQL model "
        "(standing in for the product's dbt model, which is the Online Retail one) derives 14 features. Each "
        "pipeline step is the product's own function (`segmentation.pipeline`, `segmentation.scoring`), run in a "
        "fresh Python process, as an Airflow task would be; seconds are the step function's own wall time, "
        "'process' adds the interpreter start and imports (torch, Great Expectations: 1-3 s).", "",
        f"Training: **on a uniform sample of at most {cfg.get('train_rows', 'n/a'):,} rows** "
        f"({cfg.get('epochs')} epochs max, patience {cfg.get('patience')}, kl_anneal_epochs {cfg.get('kl_anneal_epochs')}, "
        "1 torch thread). The pipeline has no setting for this (`pipeline.train` always fits on the whole "
        "snapshot), so the benchmark swaps the train step's reader for a DuckDB reservoir sample; every other step "
        "handles every row. Scoring uses the sharded streaming scorer (`SEGMENT_SCORING_MODE=sharded`, shards "
        "scored one after another here); `score (whole table)` is `pipeline.score` for comparison. "
        f"DuckDB threads: {cfg.get('duckdb_threads')}. PostgreSQL: a fresh database on the local server.", "",
        provenance(sc, [f"data {cfg.get('data_seed')}", f"model {cfg.get('model_seed')}"]),
    )
    per_case = [c for c in sc.get("cases", []) if c.get("command") or c.get("git_commit")]
    if per_case and (sc.get("merged_from") or any(c.get("uncommitted_library_files") for c in per_case)):
        page.add("Cases come from more than one run, or from a working tree with uncommitted library changes:", "")
        for c in per_case:
            dirty = c.get("uncommitted_library_files")
            page.add(f"- {c['rows']:,} rows, K={c['k']}: `{c.get('command')}`, finished {c.get('finished_utc', 'n/a')}, "
                     f"git {str(c.get('git_commit'))[:7]}" + (f", uncommitted: {', '.join(dirty)}" if dirty else ""))
        page.add("")
    cases = [c for c in sc.get("cases", []) if not c.get("k_sweep")]
    if not cases:
        page.add("_No completed case in scale.json._", "")
    steps = [s for s, _ in STEP_LABELS if any(s in c["steps"] for c in cases)]
    label = dict(STEP_LABELS)
    if cases:
        page.add("### Wall time per step (seconds) and end to end", "",
                 "| rows | K | " + " | ".join(label[s] for s in steps) + " | end to end (extract..publish DuckDB) "
                 "| + publish PostgreSQL | with process start-up | max peak RSS |",
                 "|---|---|" + "---|" * len(steps) + "---|---|---|---|")
        for c in cases:
            cells = [f(c["steps"].get(s, {}).get("seconds"), 1) for s in steps]
            page.add(f"| {c['rows']:,} | {c['k']} | " + " | ".join(cells) + f" | **{f(c['end_to_end_seconds'], 0)} s** "
                     f"({f(c['end_to_end_seconds'] / 60, 1)} min) | {f(c.get('end_to_end_with_postgres_seconds'), 0)} s | "
                     f"{f(c.get('end_to_end_process_seconds'), 0)} s | {f(c['max_peak_rss_mb'] / 1024, 2)} GB |")
        if any(c["steps"].get(s, {}).get("cpu_seconds") is not None for c in cases for s in steps):
            page.add("", "CPU seconds of each step's process (all threads) and the 1-minute load average before / after "
                     "it; CPU well below wall time means the step waited: for the disk, for PostgreSQL's server "
                     "process, or for other jobs on the shared machine (the benchmark runs niced):", "",
                     "| rows | " + " | ".join(label[s] for s in steps) + " |", "|---|" + "---|" * len(steps))
            for c in cases:
                cells = []
                for s in steps:
                    st = c["steps"].get(s, {})
                    lb, la = st.get("load_average_before"), st.get("load_average_after")
                    cells.append(f"{f(st.get('cpu_seconds'), 1)} s cpu / {f(st.get('seconds'), 1)} s"
                                 + (f" (load {lb[0]:.1f}/{la[0]:.1f})" if lb and la else "") if st else "n/a")
                page.add(f"| {c['rows']:,} | " + " | ".join(cells) + " |")
        page.add("", "### Peak resident memory per step (MB, whole process)", "",
                 "| rows | " + " | ".join(label[s] for s in steps) + " |", "|---|" + "---|" * len(steps))
        for c in cases:
            page.add(f"| {c['rows']:,} | " + " | ".join(f(c["steps"].get(s, {}).get("peak_rss_mb"), 0) for s in steps) + " |")
        page.add("", "### Throughput (rows per second of the step; train: rows of the training sample)", "",
                 "| rows | " + " | ".join(label[s] for s in steps) + " | warehouse write only: DuckDB | PostgreSQL |",
                 "|---|" + "---|" * (len(steps) + 2))
        for c in cases:
            page.add(f"| {c['rows']:,} | " + " | ".join(f(c["steps"].get(s, {}).get("rows_per_s"), 0) for s in steps)
                     + f" | {f(c['steps'].get('publish_duckdb', {}).get('warehouse_write_rows_per_s'), 0)} | "
                       f"{f(c['steps'].get('publish_postgres', {}).get('warehouse_write_rows_per_s'), 0)} |")
        page.add("")
        # growth
        if len(cases) >= 2:
            page.add("### Growth with rows", "",
                     "Exponent b of seconds ~ rows^b between consecutive sizes (1 = linear; train is flat by design "
                     "once the table exceeds the training sample):", "",
                     "| step | " + " | ".join(f"{a['rows']:,} -> {b['rows']:,}" for a, b in zip(cases, cases[1:])) + " |",
                     "|---|" + "---|" * (len(cases) - 1))
            for s in steps:
                cells = []
                for a, b in zip(cases, cases[1:]):
                    sa, sb = a["steps"].get(s, {}).get("seconds"), b["steps"].get(s, {}).get("seconds")
                    cells.append(f"{math.log(sb / sa) / math.log(b['rows'] / a['rows']):.2f}" if sa and sb else "n/a")
                page.add(f"| {label[s]} | " + " | ".join(cells) + " |")
            page.add("")
        # breakdown
        page.add("### Inside the steps (seconds in the library functions named)", "",
                 "| rows | step | breakdown |", "|---|---|---|")
        for c in cases:
            for s in steps:
                t = c["steps"].get(s, {}).get("timers")
                if t:
                    page.add(f"| {c['rows']:,} | {label[s]} | " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + " |")
        page.add("")
        page.add("| rows | trained on | init | epochs run | s/epoch | ms/step | input columns | ARI vs planted | NMI vs planted "
                 "| segment sizes |", "|---|---|---|---|---|---|---|---|---|---|")
        for c in cases:
            m = c["steps"].get("train", {}).get("model") or {}
            q = c.get("planted_agreement") or {}
            page.add(f"| {c['rows']:,} | {f(m.get('n_rows'))} | {m.get('init') or 'not recorded'} | {m.get('epochs_run')} | "
                     f"{f(m.get('seconds_per_epoch'), 2)} | "
                     f"{f(m.get('ms_per_step'), 2)} | {m.get('input_dim')} | {f(q.get('ari'))} | {f(q.get('nmi'))} | "
                     f"{q.get('segment_sizes')} |")
        page.add("")
    sweep = [c for c in sc.get("cases", []) if c.get("k_sweep") or c.get("rows") == cfg.get("k_sweep_rows")]
    if len(sweep) > 1:
        sweep.sort(key=lambda c: c["k"])
        ks = ["train", "score", "publish_duckdb"]
        page.add(f"### Growth with K at {sweep[0]['rows']:,} rows (same snapshot; train, score and publish rerun)", "",
                 "| K | " + " | ".join(label[s] + " s" for s in ks) + " | train ms/step | " +
                 " | ".join(label[s] + " peak MB" for s in ks) + " | ARI vs planted |",
                 "|---|" + "---|" * (2 * len(ks) + 2))
        for c in sweep:
            m = c["steps"].get("train", {}).get("model") or {}
            page.add(f"| {c['k']} | " + " | ".join(f(c["steps"][s].get("seconds"), 1) for s in ks)
                     + f" | {f(m.get('ms_per_step'), 2)} | "
                     + " | ".join(f(c["steps"][s].get("peak_rss_mb"), 0) for s in ks)
                     + f" | {f((c.get('planted_agreement') or {}).get('ari'))} |")
        page.add("")
    for fl in sc.get("failures", []):
        page.add(f"**{fl['rows']:,} rows did not complete:**", "", "```", fl["error"][-1500:], "```", "")
    one_m = next((c for c in cases if c["rows"] == 1_000_000), None)
    if one_m:
        e2e = one_m["end_to_end_seconds"]
        slow = sorted(((one_m["steps"][s]["seconds"], label[s]) for s in one_m["end_to_end_steps"]), reverse=True)[:2]
        targets["1m"] = {
            "measured": f"{e2e:.0f} s = {e2e / 60:.1f} min (step functions, extract..publish to DuckDB); "
                        f"{one_m['end_to_end_process_seconds'] / 60:.1f} min with process start-ups; "
                        f"{(one_m.get('end_to_end_with_postgres_seconds') or float('nan')) / 60:.1f} min adding the "
                        "PostgreSQL publish",
            "met": e2e < 600, "by": None if e2e < 600 else f"{e2e - 600:.0f} s over ({100 * (e2e - 600) / 600:.0f}%)",
            "source": "scale.json",
            "why": f"training on a {one_m['train_rows']:,}-row sample; the largest steps are "
                   + " and ".join(f"{n} ({s:.0f} s)" for s, n in slow),
        }
    # plots
    if cases:
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        xs = [c["rows"] for c in cases]
        for s in steps:
            ys = [c["steps"].get(s, {}).get("seconds") for c in cases]
            pts = [(x, y) for x, y in zip(xs, ys) if y]
            if pts:
                axes[0].plot(*zip(*pts), "o-", label=label[s])
            ys = [c["steps"].get(s, {}).get("peak_rss_mb") for c in cases]
            pts = [(x, y / 1024) for x, y in zip(xs, ys) if y]
            if pts:
                axes[1].plot(*zip(*pts), "o-", label=label[s])
        axes[0].plot(xs, [c["end_to_end_seconds"] for c in cases], "k^-", lw=2, label="end to end")
        axes[0].axhline(600, color="grey", ls=":", lw=0.8)
        axes[0].set(xscale="log", yscale="log", xlabel="customers", ylabel="seconds", title="wall time per step")
        axes[1].set(xscale="log", xlabel="customers", ylabel="GB", title="peak RSS per step (process)")
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(page.plots / "scale.png", dpi=110)
        plt.close(fig)
        page.image("scale.png", "scale: seconds and peak RSS per step")
        if len(sweep) > 1:
            fig, ax = plt.subplots(figsize=(6, 4))
            for s in ("train", "score", "publish_duckdb"):
                ax.plot([c["k"] for c in sweep], [c["steps"][s]["seconds"] for c in sweep], "o-", label=label[s])
            ax.set(xscale="log", xlabel="K", ylabel="seconds", title=f"steps vs K at {sweep[0]['rows']:,} rows")
            ax.legend()
            fig.tight_layout()
            fig.savefig(page.plots / "scale_k.png", dpi=110)
            plt.close(fig)
            page.image("scale_k.png", "scale: seconds per step vs K")


def section_roofline(page: Page, res: Path, targets: dict[str, Any]) -> None:
    page.add("## 4. Roofline: matrix-multiply throughput at the model's layer shapes vs achieved training FLOP/s", "")
    rf = load(res, "roofline.json")
    if not rf:
        _missing(page, "roofline.json", "python benchmarks/roofline.py")
        return
    pk = rf["matmul_peak"]
    page.add("Every matrix product of one training step (forward and backward) is recorded with its shapes; "
             "`torch.mm` / `torch.bmm` is timed at each shape on one thread; the roofline of a step is the time those "
             "products would take at those speeds, and the roofline FLOP/s the step's FLOPs over that time. Achieved: "
             "FlopCounterMode FLOPs of a step over the measured seconds per step of a real `fit` (training loop's own "
             f"timer). Machine peak for reference: a {pk['shape'][0]}^3 `torch.mm` at {pk['gflops_per_s']:.1f} GFLOP/s "
             "(float32, 1 thread).", "", provenance(rf))
    page.add("| configuration | input columns | GFLOP/step | roofline GFLOP/s | roofline ms/step | achieved ms/step | "
             "achieved GFLOP/s | % of roofline | % of 2048^3 peak | isolated steps: % of roofline | matmul share of CPU time |",
             "|---|---|---|---|---|---|---|---|---|---|---|")
    for c in rf["configs"]:
        page.add(f"| {c['name']} | {c['input_dim']} | {c['flops']['train_step'] / 1e9:.3f} | {c['roofline_gflops_per_s']:.1f} | "
                 f"{c['roofline_ms_per_step']:.2f} | {c['achieved_ms_per_step']:.2f} | {c['achieved_gflops_per_s']:.1f} | "
                 f"**{c['percent_of_roofline']:.0f}%** | {c['percent_of_matmul_peak']:.0f}% | "
                 f"{c['isolated_percent_of_roofline']:.0f}% | {100 * c['profile']['self_cpu_share'].get('matmul', 0):.0f}% |")
    page.add("", "'Isolated steps' repeat loss, backward, gradient clipping and Adam on one fixed minibatch, without the "
             "training loop's batching and per-step loss read-outs. Where the rest of a step goes (self CPU time, "
             "torch.profiler):", "")
    for c in rf["configs"]:
        shares = c["profile"]["self_cpu_share"]
        phases = c["profile"].get("phase_ms_per_step")
        page.add(f"- {c['name']}: " + (("phases of an isolated step " + ", ".join(f"{k} {v:.2f} ms" for k, v in phases.items())
                                        + "; ") if phases else "")
                 + "self CPU time by operator group " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())
                 + "; top operators: "
                 + ", ".join(f"`{o['op']}` {o['self_ms_per_step']:.2f} ms" for o in c["profile"]["top_ops"][:6]))
    page.add("")
    for key, c in (("roof", next((c for c in rf["configs"] if c["name"].startswith("mnist_concrete")), None)),
                   ("roof_crm", next((c for c in rf["configs"] if c["name"].startswith("crm")), None))):
        if c is None:
            continue
        pct, share = c["percent_of_roofline"], 100 * c["profile"]["self_cpu_share"].get("matmul", 0)
        targets[key] = {
            "measured": f"{pct:.0f}% ({c['name']}: {c['achieved_gflops_per_s']:.1f} of {c['roofline_gflops_per_s']:.1f} "
                        f"GFLOP/s; isolated steps {c['isolated_percent_of_roofline']:.0f}%)",
            "met": pct >= 30, "by": None if pct >= 30 else f"{30 - pct:.0f} percentage points short",
            "source": "roofline.json",
            "why": "" if pct >= 30 else
            f"a step is {c['flops']['train_step'] / 1e9:.3f} GFLOP on {c['input_dim']} input columns: matrix products are "
            f"only {share:.0f}% of its CPU time; the rest is per-operator work that does not shrink with the layer sizes "
            "(the likelihood heads, Adam and gradient clipping over every parameter, autograd and Python dispatch)",
        }
    # plot: throughput per shape, achieved lines
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, c in enumerate(rf["configs"]):
        col = f"C{i}"
        xs = [s["flops_each"] for s in c["shapes"]]
        ys = [s["gflops_per_s"] for s in c["shapes"]]
        ax.scatter(xs, ys, color=col, s=18, label=f"{c['name']}: mm at its shapes")
        ax.axhline(c["roofline_gflops_per_s"], color=col, ls="--", lw=1)
        ax.axhline(c["achieved_gflops_per_s"], color=col, ls=":", lw=1.5)
    ax.axhline(pk["gflops_per_s"], color="black", lw=0.8, label=f"2048^3 mm peak {pk['gflops_per_s']:.0f} GFLOP/s")
    ax.set(xscale="log", yscale="log", xlabel="FLOPs of one matrix product", ylabel="GFLOP/s (1 thread)",
           title="matmul throughput at the layer shapes (dashed: roofline, dotted: achieved training)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(page.plots / "roofline.png", dpi=110)
    plt.close(fig)
    page.image("roofline.png", "roofline")


def section_other(page: Page, res: Path) -> None:
    rows = []
    sm = load(res, "scoring_memory.json")
    if sm:
        s = sm["streaming"]
        w = sm.get("whole_table") or {}
        rows.append(f"| scoring_memory.json | {sm['rows']:,} rows streamed: peak RSS {s['peak_rss_mb']:.0f} MB, "
                    f"{s['rows_per_s']:,.0f} rows/s" + (f"; whole table {w['peak_rss_mb']:.0f} MB" if w else "")
                    + f" | `python benchmarks/scoring_memory.py` ({sm.get('at', 'date n/a')}) |")
    vo = load(res, "validation_overhead.json")
    if vo:
        rows.append(f"| validation_overhead.json | {vo['rows']:,} feature rows: validation {vo['timings_s']['validate_features']} s, "
                    f"{100 * vo['validation_share_of_run']:.1f}% of a run with {vo['epochs_timed']} epochs | `{vo['command']}` |")
    ni = load(res, "nights.json")
    if ni:
        ok = [r for r in ni["rows"] if r["status"] == "success"]
        rows.append(f"| nights.json | {len(ok)} of {len(ni['rows'])} nights succeeded; median "
                    f"{sorted(r['seconds'] for r in ok)[len(ok) // 2] if ok else 'n/a'} s per night | `{ni['command']}` |")
    if rows:
        page.add("## Other results in this folder", "", "| file | headline | command |", "|---|---|---|", *rows, "")


def section_wall_times(page: Page, res: Path) -> None:
    ra = load(res, "run_all.json")
    if not ra or not ra.get("pieces"):
        return
    page.add("## How long each piece took (benchmarks/run_all.py)", "", "| piece | command | wall time | finished | exit |",
             "|---|---|---|---|---|")
    for name, p in ra["pieces"].items():
        page.add(f"| {name} | `{p['command']}` | {p['seconds'] / 60:,.1f} min | {p.get('finished_utc', 'n/a')} | "
                 f"{p['exit_code']} |")
    page.add("")


def build(results: Path, out: Path, plots: Path) -> Page:
    plots.mkdir(parents=True, exist_ok=True)
    page = Page(out, plots)
    targets: dict[str, Any] = {}
    body = Page(out, plots)
    PROBLEMS.clear()
    for section in (section_k_scaling, section_quality, section_scale, section_roofline, section_other,
                    section_wall_times):
        args = (body, results, targets) if section in (section_k_scaling, section_quality, section_scale,
                                                       section_roofline) else (body, results)
        try:
            section(*args)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as exc:
            # a result file of another shape (partial, older format, hand-edited): say which
            # section, and keep the rest of the page
            what = section.__name__.removeprefix("section_")
            PROBLEMS[f"section {what}"] = f"{type(exc).__name__}: {exc}"
            body.add(f"_Could not render the {what} section: a result file lacks or mistypes an entry "
                     f"({type(exc).__name__}: {exc}). Rerun that benchmark._", "")
    quick = any((load(results, n) or {}).get("quick") for n in ("mnist.json", "peers.json", "scale.json", "roofline.json"))
    page.add("# Benchmark results", "")
    if quick:
        page.add("> **Smoke run (`--quick`)**: few seeds, few epochs, small tables. These numbers check that the "
                 "benchmarks run; they are not results.", "")
    page.add(f"Generated by `python benchmarks/results_md.py` from the JSON files in `{os.path.relpath(results, out.parent)}/`; "
             "do not edit by hand. Each section names the command, seeds, library versions, machine and date of its "
             "numbers. `make bench` reruns everything (an hour or more on 2 cores), `make bench-quick` is a smoke run "
             "of a few minutes, `make bench-report` only rewrites this page. What each script measures, and how, is "
             "in benchmarks/README.md.", "")
    page.add("## Targets", "", "Measured, never asserted in tests. Where a target is missed the row says by how much, "
             "and why.", "", "| target | measured | met | by how much | why | source |", "|---|---|---|---|---|---|")
    for key, text in TARGETS.items():
        t = targets.get(key)
        if not t:
            page.add(f"| {text} | not measured yet | - | - | - | - |")
            continue
        why = (t.get("why") or "-") if not t["met"] else "-"
        page.add(f"| {text} | {t['measured']} | {'yes' if t['met'] else '**no**'} | {t.get('by') or '-'} | "
                 f"{why} | {t['source']} |")
    page.add("")
    page.lines += body.lines
    page.images = body.images
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="results_md.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder with the JSON files (default benchmarks/results)")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"), help="Markdown file (default benchmarks/RESULTS.md)")
    ap.add_argument("--plots", default=None, help="folder for the PNGs (default: the results folder)")
    args = ap.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    if not results.is_dir():
        ap.error(f"--results {results}: no such folder (the benchmarks write their JSON to benchmarks/results)")
    page = build(results, out, Path(args.plots) if args.plots else results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(page.lines).rstrip() + "\n")
    print(f"wrote {out} and {len(page.images)} plot(s): {', '.join(p.name for p in page.images)}")
    for what, problem in PROBLEMS.items():
        print(f"results_md.py: {what}: {problem}", file=sys.stderr)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())

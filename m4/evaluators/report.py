"""Transfer results side by side: a markdown table, a bar plot, prediction grids.

    paths = report.write(eval_dir, results)   # results: the runs' result dicts
    # eval_dir/results.md, results.json, results.png, <task>_<budget>_predictions.png

Rows of the table are (task, metric, label budget, protocol); columns are
the inits (scratch, then pretrained) and their difference; a supervised
conv net baseline (init "convnet") has rows of its own (protocol
"supervised"). With several seeds a cell is "mean ± std (n)"; metrics marked
↑ are better higher, ↓ lower.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Mapping, Sequence

import numpy as np

from m4 import pictures
from m4 import workdir as workdir_lib

INIT_ORDER = ("scratch", "pretrained", "convnet")
PROTOCOL_ORDER = ("probe", "finetune", "supervised")


def save_examples(path: str, examples: Mapping[str, np.ndarray]) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}.npz"
  np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in examples.items()})
  os.replace(tmp, path)
  return path


def _order(values, preferred):
  return sorted(set(values), key=lambda v: _rank(v, preferred))


def _rank(value, preferred) -> tuple:
  return (preferred.index(value) if value in preferred else len(preferred), value)


def _row_order(key) -> tuple:
  """(task, fraction, protocol) rows: by budget, then probe before finetune."""
  return (key[1], _rank(key[2], PROTOCOL_ORDER))


def _budget(result) -> str:
  return f"{100 * result['label_fraction']:g} % ({result['num_labels']})"


def _cell(values: Sequence[float]) -> str:
  if not values:
    return ""
  if len(values) == 1:
    return f"{values[0]:.4g}"
  return f"{np.mean(values):.4g} ± {np.std(values):.2g} ({len(values)})"


def _groups(results):
  """{(task, fraction, protocol): {init: [results over seeds]}}."""
  out = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in results:
    out[(r["task"], r["label_fraction"], r["protocol"])][r["init"]].append(r)
  return out


def table(results: Sequence[Mapping[str, Any]]) -> str:
  """The markdown table of `results`."""
  inits = _order([r["init"] for r in results], INIT_ORDER)
  both = "scratch" in inits and "pretrained" in inits
  head = ["task", "metric", "labels", "protocol"] + inits + (["Δ pretrained − scratch"]
                                                             if both else [])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  groups = _groups(results)
  tasks = list(dict.fromkeys(r["task"] for r in results))
  for task in tasks:
    keys = sorted((k for k in groups if k[0] == task), key=_row_order)
    first = next(iter(groups[keys[0]].values()))[0]
    for metric in first["headline"]:
      arrow = "↑" if first["higher_is_better"].get(metric, True) else "↓"
      label = f"{metric} {arrow}"
      if "chance" in first["metrics"]:
        label += f" (chance {first['metrics']['chance']:.3g})"
      for key in keys:
        by_init = groups[key]
        vals = {i: [r["metrics"][metric] for r in by_init.get(i, [])] for i in inits}
        sample = next(iter(by_init.values()))[0]
        row = [task, label, _budget(sample), key[2]] + [_cell(vals[i]) for i in inits]
        if both:
          a, b = vals["scratch"], vals["pretrained"]
          row.append(f"{np.mean(b) - np.mean(a):+.4g}" if a and b else "")
        lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def runs_table(results: Sequence[Mapping[str, Any]]) -> str:
  """One line per run: length, final training loss and time."""
  lines = ["| run | labels | lr | steps | epochs | train loss | train s | steps/s | total s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    loss = f"{r['train_loss']:.4g}" if r.get("train_loss") is not None else ""
    lr = f"{r['learning_rate']:g}" if "learning_rate" in r else ""
    lines.append(f"| {r['run']} | {r['num_labels']} | {lr} | {r['steps']} | {r['epochs']:.1f}"
                 f" | {loss} | {r['train_seconds']:.0f} | {r['steps_per_sec']:.2f}"
                 f" | {r['seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def describe(config) -> list[str]:
  """Lines naming what a transfer config ran (for the head of results.md)."""
  lines = [f"init: `{config.get('init') or '(none)'}`",
           f"seeds: {list(config.seeds)}; label fractions: {list(config.label_fractions)};"
           f" evaluated on split `{config.data.eval_split}`"]
  for p in tuple(config.protocols) + (("supervised",) if config.get("baselines") else ()):
    s = config[p]
    steps = f"{s.num_steps} steps" if s.num_steps else f"{s.num_epochs} epochs"
    rates = tuple(config.get("sweep", {}).get("learning_rates", {}).get(p, ()) or ())
    lr = (f"lr swept over {', '.join(f'{x:g}' for x in rates)}" if rates
          else f"lr {s.learning_rate:g}")
    seeds = f"seeds {list(s.seeds)}, " if s.get("seeds") else ""
    lines.append(f"{p}: {seeds}{steps}, batch {config.data.batch_size}, {lr},"
                 f" weight decay {s.weight_decay:g}, layer decay {s.layer_decay:g},"
                 f" head hidden {s.head_hidden}, dense head {s.get('dense_head', 'patch')}"
                 + (f", head pool {s.head_pool}" if s.get("head_pool", "mean") != "mean" else "")
                 + (f", the last {s.feature_layers} encoder layers' features"
                    if p != "supervised" and s.get("feature_layers", 1) != 1 else ""))
  running = tuple(config.protocols) + (("supervised",) if config.get("baselines") else ())
  for task, per_task in (config.get("task_protocols") or {}).items():
    for p, override in (per_task or {}).items():
      if p not in running:
        continue
      fields = [(f"lr swept over {', '.join(f'{x:g}' for x in v)}" if v else "no lr sweep")
                if k == "learning_rates"
                else f"{k.replace('_', ' ')} {list(v) if isinstance(v, (list, tuple)) else v}"
                for k, v in override.items()]
      lines.append(f"{task} {p}: " + ", ".join(fields))
  return lines


def plot(path: str, results: Sequence[Mapping[str, Any]]) -> str:
  """Bars of each task's headline metrics: inits side by side per protocol/budget."""
  # Heavy (matplotlib); only the bar plot needs it.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  groups = _groups(results)
  panels = []
  for task in dict.fromkeys(r["task"] for r in results):
    first = next(r for r in results if r["task"] == task)
    panels += [(task, m, first["higher_is_better"].get(m, True)) for m in first["headline"]]
  inits = _order([r["init"] for r in results], INIT_ORDER)
  cols = min(len(panels), 3)
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  colors = {"scratch": "#9e9e9e", "pretrained": "#1f77b4", "convnet": "#ff7f0e"}
  for ax, (task, metric, higher) in zip(axes.ravel(), panels):
    keys = sorted((k for k in groups if k[0] == task), key=_row_order)
    x = np.arange(len(keys))
    width = 0.8 / max(len(inits), 1)
    for j, init in enumerate(inits):
      vals = [[r["metrics"][metric] for r in groups[k].get(init, [])] for k in keys]
      mean = [np.mean(v) if v else np.nan for v in vals]
      err = [np.std(v) if len(v) > 1 else 0 for v in vals]
      ax.bar(x + (j - (len(inits) - 1) / 2) * width, mean, width, yerr=err,
             label=init, color=colors.get(init))
    ax.set_xticks(x, [f"{k[2]}\n{100 * k[1]:g}%" for k in keys])
    ax.set_title(f"{task}: {metric} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  axes.ravel()[0].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
  return path


def prediction_grids(eval_dir: str, results: Sequence[Mapping[str, Any]],
                     rows: int = 6) -> list[str]:
  """One PNG per dense task and label budget (first seed): inputs, label, predictions."""
  out = []
  dense = [r for r in results if r["kind"] in ("segmentation", "depth")]
  keys = dict.fromkeys((r["task"], r["label_fraction"]) for r in dense)
  for task, fraction in keys:
    runs = [r for r in dense if r["task"] == task and r["label_fraction"] == fraction]
    seed = min(r["seed"] for r in runs)
    runs = sorted((r for r in runs if r["seed"] == seed),
                  key=lambda r: (_rank(r["protocol"], PROTOCOL_ORDER),
                                 _rank(r["init"], INIT_ORDER)))
    loaded = {}
    for r in runs:
      path = os.path.join(eval_dir, "examples", f"{r['run']}.npz")
      if os.path.exists(path):
        with np.load(path) as z:
          loaded[r["run"]] = {k: z[k] for k in z.files}
    if not loaded:
      continue
    ref = next(iter(loaded.values()))
    n = min(rows, len(ref["target"]))
    kind = "semseg" if runs[0]["kind"] == "segmentation" else "depth"
    cells, kinds, titles = [], {}, {}
    for i in range(n):
      row = {}
      for k in sorted(k for k in ref if k.startswith("input_")):
        row[k] = ref[k][i]
        kinds[k] = k[len("input_"):]
        titles[k] = k[len("input_"):]
      row["label"] = ref["target"][i]
      kinds["label"], titles["label"] = kind, "label"
      for r in runs:
        if r["run"] in loaded:
          col = f"{r['init']}_{r['protocol']}"
          row[col] = loaded[r["run"]]["prediction"][i]
          kinds[col], titles[col] = kind, f"{r['init']} {r['protocol']}"
      cells.append(row)
    captions = [f"test {int(ref['id'][i])}" for i in range(n)]
    path = os.path.join(eval_dir, f"{task}_{100 * fraction:g}pct_predictions.png")
    # Depth on the labels' scale: a prediction for an unlabelled pixel (the sky) is clipped.
    scale = pictures.valid_depth_range(ref["target"][:n]) if kind == "depth" else None
    out.append(pictures.save_grid(path, cells, captions, kinds, titles=titles, depth_range=scale))
  return out


def headline(results: Sequence[Mapping[str, Any]]) -> dict:
  """{task/protocol/budget: {init: first headline metric (mean over seeds)}}."""
  out = {}
  for (task, fraction, protocol), by_init in _groups(results).items():
    first = next(iter(by_init.values()))[0]
    metric = first["headline"][0]
    key = f"{task} {protocol} {100 * fraction:g}% {metric}"
    out[key] = {i: float(np.mean([r["metrics"][metric] for r in rs]))
                for i, rs in by_init.items()}
  return out


# The spread of one seed's gain (pretrained - scratch, paired runs) assumed when
# the seeds cannot show a larger one: measured at the quickstart's scale
# (experiments/transfer_scenes/, "The main job's rows over 3 seeds"): 0.006-0.012.
SEED_SPREAD = 0.01


def verdicts(results: Sequence[Mapping[str, Any]]) -> list[str]:
  """One plain sentence per headline row: does pretrained beat scratch?

  The mean gain over seeds is a win only beyond two standard errors:
  2 x spread / sqrt(seeds), the spread being the std of the per-seed gains
  of paired runs (unpaired: the larger arm's std), at least SEED_SPREAD.
  Within it the row reads "no clear difference", not a win. A row from one
  seed says so.
  """
  out = []
  for (task, fraction, protocol), by_init in _groups(results).items():
    if "pretrained" not in by_init or "scratch" not in by_init:
      continue
    first = by_init["pretrained"][0]
    metric = first["headline"][0]
    higher = first["higher_is_better"].get(metric, True)
    # {init: {seed: value}}; paired runs (same seeds) share labels, data order and head init.
    values = {i: {int(r["seed"]): float(r["metrics"][metric]) for r in by_init[i]}
              for i in ("pretrained", "scratch")}
    pre, scr = (float(np.mean(list(v.values()))) for v in values.values())
    sign = 1.0 if higher else -1.0
    pretrained, scratch = values["pretrained"], values["scratch"]
    if pretrained.keys() == scratch.keys():
      gains = [sign * (pretrained[s] - scratch[s]) for s in pretrained]
      spreads = [gains]
    else:  # Unpaired: one gain of the means; the arms' own spreads stand in.
      gains = [sign * (pre - scr)]
      spreads = [list(v.values()) for v in values.values()]
    seeds = min(len(v) for v in spreads)
    spread = max([SEED_SPREAD] + [float(np.std(v, ddof=1)) for v in spreads if len(v) > 1])
    margin = 2 * spread / np.sqrt(seeds)
    gain = float(np.mean(gains))
    note = "; one seed" if seeds == 1 else ""
    if abs(gain) <= margin:
      verdict = f"no clear difference (within 2 standard errors, {margin:.3f}{note})"
    else:
      verdict = ("pretrained beats scratch" if gain > 0 else
                 "pretrained does NOT beat scratch") + (" (one seed)" if note else "")
    out.append(f"{task} {protocol} {100 * fraction:g}% {metric}: pretrained {pre:.3f} vs scratch"
               f" {scr:.3f} ({pre - scr:+.3f}): {verdict}")
  return out


def sweep_table(sweep: Sequence[Mapping[str, Any]],
                results: Sequence[Mapping[str, Any]]) -> str:
  """The learning-rate sweep: each arm's validation figure per rate; * = chosen."""
  chosen = {(r["task"], r["label_fraction"], r["init"], r["protocol"]): r["learning_rate"]
            for r in results}
  rows = collections.defaultdict(dict)
  for r in sweep:
    key = (r["task"], r["label_fraction"], r["init"], r["protocol"])
    metric = r["headline"][0]
    mark = "*" if chosen.get(key) == r["learning_rate"] else ""
    rows[key][r["learning_rate"]] = f"{r['metrics'][metric]:.4g}{mark} ({metric})"
  rates = sorted({lr for cells in rows.values() for lr in cells})
  lines = ["| task | labels | init | protocol | " + " | ".join(f"lr {x:g}" for x in rates) + " |",
           "|" + "---|" * (4 + len(rates))]
  for (task, fraction, init, protocol), cells in rows.items():
    lines.append(f"| {task} | {100 * fraction:g} % | {init} | {protocol} | "
                 + " | ".join(cells.get(x, "") for x in rates) + " |")
  return "\n".join(lines) + "\n"


def write(eval_dir: str, results: Sequence[Mapping[str, Any]], *, title: str = "Transfer",
          notes: Sequence[str] = (), sweep: Sequence[Mapping[str, Any]] = ()) -> dict:
  """results.md, results.json, results.png and the prediction grids."""
  os.makedirs(eval_dir, exist_ok=True)
  body = [f"# {title}", ""] + [f"- {n}" for n in notes] + ["", table(results)]
  if sweep:
    split = sweep[0]["eval_split"]
    body += [f"## Learning-rate sweep (first seed, scored on `{split}`; * = used above)", "",
             sweep_table(sweep, results)]
  body += ["## Runs", "", runs_table(results)]
  md = os.path.join(eval_dir, "results.md")
  tmp = f"{md}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(body))
  os.replace(tmp, md)
  workdir_lib.write_json(os.path.join(eval_dir, "results.json"), list(results))
  return {"table": md, "plot": plot(os.path.join(eval_dir, "results.png"), results),
          "predictions": prediction_grids(eval_dir, results)}

"""`python -m m4.main`: config loading, overrides and one-line errors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from m4 import sharding
from tests.conftest import REPO


def _run(*args, cwd=REPO):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "m4.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture
def echo_config(tmp_path):
  """A config whose only stage writes a tiny summary (quickstart machinery)."""
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent("""
      import ml_collections
      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.job = "quickstart"
        c.order = ("a",)
        c.stages = ml_collections.ConfigDict()
        c.stages.a = ml_collections.ConfigDict({"job": "quickstart", "order": (),
                                                "stages": {}, "note": "{root}/x"})
        return c
  """))
  return str(path)


def test_unknown_override_names_field(echo_config, tmp_path):
  r = _run(f"--config={echo_config}", f"--workdir={tmp_path / 'w'}", "--config.stages.a.nope=3")
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "nope" in lines[0], r.stderr


def test_missing_config_file(tmp_path):
  r = _run(f"--config={tmp_path / 'missing.py'}", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2
  assert "missing.py" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_job(echo_config, tmp_path):
  r = _run(f"--config={echo_config}", f"--workdir={tmp_path / 'w'}", "--config.job=nosuch")
  assert r.returncode == 2
  assert "nosuch" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_writes_config_and_skips_done_stages(echo_config, tmp_path):
  wd = tmp_path / "w"
  r = _run(f"--config={echo_config}", f"--workdir={wd}", "--config.stages.a.note=hello {root}")
  assert r.returncode == 0, r.stderr
  cfg = json.loads((wd / "config.json").read_text())
  assert cfg["stages"]["a"]["note"] == "hello {root}"
  # The stage saw {root} resolved to the quickstart workdir.
  stage_cfg = json.loads((wd / "a" / "config.json").read_text())
  assert stage_cfg["note"] == f"hello {wd}"
  assert (wd / "a" / "summary.json").exists()
  r = _run(f"--config={echo_config}", f"--workdir={wd}")
  assert r.returncode == 0 and "skipped" in r.stdout


@pytest.mark.parametrize("cores, devices", [(1, 1), (2, 2), (3, 2), (6, 4), (8, 8), (64, 8)])
def test_one_cpu_device_per_core_as_a_power_of_two(cores, devices):
  assert sharding.auto_cpu_devices(cores) == devices


def test_cpu_devices_flag(echo_config, tmp_path):
  """--cpu_devices=N gives the job N CPU devices even where XLA_FLAGS sets none; a
  negative count is refused before anything is written."""
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="")
  cmd = [sys.executable, "-m", "m4.main", f"--config={echo_config}"]
  r = subprocess.run(cmd + [f"--workdir={tmp_path / 'a'}", "--cpu_devices=2"], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "on 2 cpu device(s)" in r.stderr
  r = subprocess.run(cmd + [f"--workdir={tmp_path / 'b'}", "--cpu_devices=-1"], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "--cpu_devices" in r.stderr
  assert not (tmp_path / "b").exists()


def _config_files():
  """configs/**.py and experiments/*/configs/*.py (the files users pass as --config)."""
  paths = []
  for root in ("configs", "experiments"):
    for d, _, files in os.walk(os.path.join(REPO, root)):
      rel = os.path.relpath(d, REPO)
      if root == "configs" or os.path.basename(rel) == "configs":
        paths += [os.path.join(rel, f) for f in files if f.endswith(".py") and f != "common.py"]
  return sorted(paths)


@pytest.mark.parametrize("path", _config_files())
def test_every_config_names_a_job_and_refuses_an_unknown_variant(path):
  """Each config file's default loads and names a known job; an unknown
  variant is refused, naming the file (m4.config_files.variant, one way)."""
  import runpy  # pylint: disable=g-import-not-at-top
  from m4 import jobs  # pylint: disable=g-import-not-at-top
  get_config = runpy.run_path(os.path.join(REPO, path))["get_config"]
  if "job" in get_config():  # Else a config for a tool or for other configs to copy.
    assert get_config().job in jobs.JOBS
  with pytest.raises(ValueError, match=f"{path}: unknown variant 'nosuch'"):
    get_config("nosuch")


def test_unknown_variant_is_one_line(tmp_path):
  r = _run("--config=configs/quickstart.py:nosuch", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2 and not (tmp_path / "w").exists()
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "configs/quickstart.py: unknown variant 'nosuch'" in lines[0], r.stderr


def test_steering_variants_resolve():
  """The steering ablations' variants load: each single-task control trains
  one component (its condition whole in, one target out) and keeps the one
  steering stage it serves; quickstart21:boxes adds the box map everywhere it
  is needed (shards, encoder, mixture, gen_boxes)."""
  import runpy  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "experiments", "steerable_generation", "configs", "steering_quick.py")
  module = runpy.run_path(path)
  components = {"text2all": {"text2all"}, "boxes2semseg": {"boxes2semseg"}, "box_map": set(),
                "boxmap2semseg": {"boxmap2semseg"},
                "count_chain": {"boxmap2semseg", "metadata2boxes"}}
  for variant in module["VARIANTS"]:
    c = module["get_config"](variant)
    assert set(c.stages.pretrain.masking.mixture) == {"rgb2all", "all2all"} | components[variant]
    assert [n for n in c.order if n.startswith("gen_")] == ["gen_boxes", "gen_rgb"]
  for variant, (given, target, stage) in module["ALONE"].items():
    c = module["get_config"](variant)
    (component,) = c.stages.pretrain.masking.mixture.values()
    assert [n for n, a in component["input_alphas"].items() if a] == [given]
    assert [n for n, a in component["target_alphas"].items() if a] == [target]
    if given in component["keep"]:  # A text: given whole.
      assert component["keep"][given] == "all"
    assert [n for n in c.order if n.startswith("gen_")] == [stage]
  c = module["get_config"]("curriculum")  # Both phases start from the base; each is drawn twice.
  assert c.order[c.order.index("pretrain"):][:3] == ("pretrain", "phase_map", "phase_whole")
  c.seed, c.phase_steps = 2, 900
  for arm, map_part in (("map", 1.0), ("whole", 0.0)):
    phase = c.stages[f"phase_{arm}"]
    assert (phase.init, phase.seed, phase.total_steps) == ("{root}/pretrain", 2, 900)
    assert phase.masking.mixture.boxes2semseg.input_alphas.semseg == map_part
    assert c.stages[f"gen_boxes_{arm}_greedy"].decoding.semseg.num_steps == 1
    assert c.stages[f"gen_boxes_{arm}_maskgit"].init == f"{{root}}/phase_{arm}"
  assert c.stages.pretrain.seed == 2
  assert c.stages.pretrain.masking.mixture.boxes2semseg.input_alphas.semseg == 0.0
  c = runpy.run_path(os.path.join(REPO, "experiments", "pretrain_scenes21", "configs",
                                  "quickstart21.py"))["get_config"]("boxes")
  assert "box_map" in c.stages.tokens.tokenize
  assert "box_map" in c.stages.pretrain.model.encoder_modalities
  assert "box_map" not in c.stages.pretrain.model.decoder_modalities
  assert c.stages.pretrain.masking.mixture.boxmap2semseg.input_alphas.box_map == 1.0
  assert c.order.index("gen_boxes") == c.order.index("generate") + 1
  assert tuple(c.stages.gen_boxes.inputs) == ("box_map",)
  assert all(tuple(c.stages.gen_boxes.decoding[t].cfg_conditions) == ("box_map",)
             for t in c.stages.gen_boxes.targets)
  assert "box_map" not in c.stages.generate.tokenizers  # The kept stage is not touched.

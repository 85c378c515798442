"""Job specs: defaults load, presets fill, overrides apply, bad specs fail naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctvlp.config import SpecError, load_spec, spec_from_dict, spec_hash, write_resolved


def test_defaults_load_with_paper_values():
    spec = load_spec()
    assert spec.data.preset == "ctrate-chest"
    assert spec.data.anatomies == ["lung", "heart", "esophagus", "aorta"]
    assert spec.data.num_anatomies == 4
    assert spec.model.vq.decay == 0.99 and spec.model.momentum == 0.995
    assert spec.model.vq.codebook_size == 100 and spec.model.vq.beta == 0.25
    assert spec.phases.phase4.init.vqvae == "phase3"


@pytest.mark.parametrize(
    "preset, spacing, window, crop, m",
    [
        ("paper-abdomen", (5.0, 1.0, 1.0), (-1000.0, 1000.0), (96, 256, 384), 16),
        ("ctrate-chest", (3.0, 1.0, 1.0), (-1150.0, 350.0), (112, 256, 352), 4),
        ("demo", (13.0, 6.0, 6.0), (-1000.0, 1000.0), (48, 64, 64), 16),
    ],
)
def test_data_presets(preset, spacing, window, crop, m):
    spec = load_spec(None, [f"data.preset={preset}"])
    assert spec.data.spacing == spacing
    assert spec.data.hu_window == window
    assert spec.data.crop_size == crop
    assert spec.data.num_anatomies == m


def test_explicit_value_beats_preset():
    spec = load_spec(None, ["data.preset=demo", "data.spacing=[4, 3, 3]"])
    assert spec.data.spacing == (4.0, 3.0, 3.0)
    assert spec.data.crop_size == (48, 64, 64)


def test_custom_grouping_derives_m():
    spec = load_spec(None, ["data.grouping={liver: [liver], spleen: [spleen]}"])
    assert spec.data.anatomies == ["liver", "spleen"] and spec.data.num_anatomies == 2


@pytest.mark.parametrize(
    "override, key_in_message",
    [
        ("model.vq.codebook_size=0", "model.vq.codebook_size"),
        ("model.bogus=1", "model.bogus"),
        ("model.vq.beta=abc", "model.vq.beta"),
        ("data.hu_window=[100, -100]", "data.hu_window"),
        ("data.grouping=thorax", "data.grouping"),
        ("data.grouping={lung: [not_a_class]}", "not_a_class"),
        ("phases.phase4.init.vqvae=null", "phase4.init.vqvae"),
        ("phases.phase2.init.vision_encoder=phase3", "phase2.init.vision_encoder"),
        ("model.pool_heads=3", "pool_heads"),
        ("model.input_windows=[[240, -160]]", "input_windows[0]"),
        ("model.input_windows=[[1200, 3000]]", "model.input_windows[0]"),
        ("model.stem_kernel=4", "model.stem_kernel"),
        ("resources.zero_stage=3", "resources.zero_stage"),
        ("ingest.report_parser=llm", "llm_path"),
        ("ingest.report_uncertainty=maybe", "report_uncertainty"),
        ("ingest.report_unreadable=drop", "report_unreadable"),
        ("ingest.report_languages=[]", "report_languages"),
        ("ingest.llm_fallback=skip", "llm_fallback"),
        ("ingest.max_oblique_deg=60", "max_oblique_deg"),
        ("ingest.min_slices=0", "min_slices"),
        ("tune.space={model.nope: {kind: uniform, low: 0, high: 1}}", "model.nope"),
        ("eval.diseases=[{name: X, anatomy: liver, prompts: [[a, b]]}]", "liver"),
    ],
)
def test_bad_spec_names_the_key(override, key_in_message):
    with pytest.raises(SpecError) as err:
        load_spec(None, [override])
    assert key_in_message in str(err.value)


def test_bad_override_syntax():
    with pytest.raises(SpecError, match="key=value"):
        load_spec(None, ["model.vq.beta"])


def test_run_spec_file_merges_and_missing_file_errors(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("name: mine\nphases:\n  phase2:\n    lr: 0.0003\n")
    spec = load_spec(run)
    assert spec.name == "mine" and spec.phases.phase2.lr == 3e-4
    assert spec.phases.phase2.epochs == 30  # the rest still comes from defaults.yaml
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_resolved_spec_round_trips(tmp_path):
    spec = load_spec(None, ["data.preset=demo", "model.encoder_depth=debug"])
    path = write_resolved(spec, tmp_path)
    again = load_spec(path)
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)
    assert spec_hash(load_spec(None, ["seed=1"])) != spec_hash(load_spec())


def test_eval_disease_presets_follow_grouping():
    chest = load_spec()
    names = [d.name for d in chest.eval.disease_list(chest.data)]
    assert len(names) == 18 and {"Emphysema", "Medical material", "Lymphadenopathy"} <= set(names)
    table1 = load_spec(None, ["eval.diseases=ctrate-table1"])
    names16 = [d.name for d in table1.eval.disease_list(table1.data)]
    assert names16 == [n for n in names if n not in ("Medical material", "Lymphadenopathy")]
    demo = load_spec(None, ["data.preset=demo"])
    assert {d.anatomy for d in demo.eval.disease_list(demo.data)} == set(demo.data.anatomies)


def test_exclude_volumes_default_empty_and_blank_refused():
    assert load_spec().data.exclude_volumes == []
    spec = load_spec(None, ["data.exclude_volumes=[train_1267_a_4, train_11755_a_3.nii.gz]"])
    assert spec.data.exclude_volumes == ["train_1267_a_4", "train_11755_a_3.nii.gz"]
    with pytest.raises(SpecError, match="exclude_volumes"):
        load_spec(None, ["data.exclude_volumes=['', x]"])


def test_credentials_have_no_field():
    with pytest.raises(SpecError, match="unknown key"):
        spec_from_dict({"storage": {"aws_secret_access_key": "x"}})


def test_cli_prints_or_exits_2():
    ok = subprocess.run([sys.executable, "-m", "ctvlp.config", "seed=3"], capture_output=True, text=True)
    assert ok.returncode == 0 and "seed: 3" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ctvlp.config", "model.vq.codebook_size=0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "model.vq.codebook_size" in bad.stderr

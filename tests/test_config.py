from datetime import date

import pytest

from bzpipe.config import (
    BuildConfig,
    IngestConfig,
    PipelineConfig,
    TrainConfig,
    config_record,
    load_pipeline_config,
    load_stage_config,
    resolve_site,
)
from bzpipe.errors import ConfigError


def test_defaults_validate():
    cfg = PipelineConfig()
    assert cfg.build.grid.n_heights == 128
    assert cfg.build.patch.blind_zone_rows == 16
    assert abs(cfg.build.grid.dz_m - 78.125) < 1e-9
    assert cfg.train.lr == 5e-5 and cfg.train.batch_size == 16
    assert [s.facility for s in cfg.ingest.site_objects()] == ["C1", "M1"]


def test_site_datastream_names():
    nsa = resolve_site("nsa")
    assert nsa.datastream("kazr") == "nsaarsclkazr1kolliasC1.c0"
    assert nsa.datastream("met") == "nsametC1.b1"
    with pytest.raises(ConfigError, match="unknown site 'xyz'"):
        resolve_site("xyz")


def test_file_then_cli_overrides_and_handed_down_keys(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("store_root: s3://bucket/run1\nsites: [oli]\nstart: 2019-02-01\nend: 2019-02-03\n"
                 "train:\n  epochs: 7\n  store_root: /elsewhere\n")
    cfg = load_pipeline_config(f, ["train.epochs=2", "build.patch.width=64"])
    assert cfg.train.epochs == 2
    assert cfg.train.store_root == "/elsewhere"          # a stage's own value wins
    assert cfg.ingest.store_root == "s3://bucket/run1"   # shared value handed down
    assert cfg.build.sites == ["oli"] and cfg.build.start == date(2019, 2, 1)
    assert cfg.build.patch.width == 64
    assert len(cfg.ingest.days()) == 3


def test_stage_config_from_pipeline_file_and_flat_file(tmp_path):
    f = tmp_path / "run.json"
    f.write_text('{"store_root": "/data", "train": {"epochs": 3}}')
    t = load_stage_config(TrainConfig, f, ["train.batch_size=4"])
    assert (t.store_root, t.epochs, t.batch_size) == ("/data", 3, 4)
    g = tmp_path / "ingest.toml"
    g.write_text('sites = ["nsa"]\nera5_source = "cds"\n')
    i = load_stage_config(IngestConfig, g, {"retries": 1})
    assert i.era5_source == "cds" and i.retries == 1


@pytest.mark.parametrize("override, message", [
    (["build.patch.blind_zone_rows=500"], "blind zone must be shallower"),
    (["ingest.end=2018-01-01"], "is before start"),
    (["ingest.era5_levels_hpa=[1000, 900]"], "300 hPa"),
    (["build.split.fractions=[0.5, 0.5, 0.5]"], "sum to 1"),
    (["train.epochs=zero"], "train.epochs"),
    (["train.no_such_field=1"], "no_such_field"),
])
def test_invalid_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(overrides=override)


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_pipeline_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_pipeline_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_pipeline_config(overrides=["train.epochs"])


def test_config_record_round_trips():
    cfg = BuildConfig(sites=["nsa"], version="v2")
    rec = config_record(cfg)
    assert rec["type"] == "BuildConfig"
    assert BuildConfig.model_validate(rec["values"]) == cfg


def test_later_stages_follow_earlier_names():
    cfg = load_pipeline_config(overrides=["build.version=v9", "train.run_name=r2", "infer.run_name=other"])
    assert cfg.train.dataset == "v9" and cfg.evaluate.dataset == "v9"
    assert cfg.evaluate.run_name == "r2"
    assert cfg.infer.run_name == "other"   # an explicit value is kept


def test_inference_fetches_era5_as_the_ingest_stage_requests_it():
    from bzpipe.config import InferConfig
    from flows.reprocess import era5_ingest_config

    cfg = load_pipeline_config(overrides=["ingest.era5_box_deg=3", "ingest.era5_levels_hpa=[1000, 850, 500, 300]",
                                          "ingest.kazr_source=arm", "infer.era5_ingest.retries=7",
                                          "sites=[nsa]", "infer.era5_source=cds"])
    assert cfg.infer.era5_ingest == {"era5_box_deg": 3, "era5_levels_hpa": [1000, 850, 500, 300], "retries": 7}
    ing = era5_ingest_config(cfg.infer, [date(2019, 1, 31), date(2019, 2, 1)])
    assert (ing.era5_box_deg, ing.era5_levels_hpa, ing.retries) == (3.0, [1000, 850, 500, 300], 7)
    assert (ing.start, ing.end, ing.era5_source, ing.kazr_source) == (date(2019, 1, 31), date(2019, 2, 1), "cds",
                                                                      "offline")
    assert ing.sites == ["nsa"]
    # without a pipeline file: the ingest defaults
    assert era5_ingest_config(InferConfig(), [date(2019, 1, 1)]).era5_box_deg == IngestConfig().era5_box_deg
    with pytest.raises(ValueError, match="not ERA-5 ingest settings"):
        InferConfig(era5_ingest={"kazr_source": "arm"})
    with pytest.raises(ValueError, match="era5_box_deg"):
        InferConfig(era5_ingest={"era5_box_deg": 50})


def test_months_keep_the_cold_seasons_of_several_years(tmp_path):
    from bzpipe import ingest

    f = tmp_path / "run.yaml"
    f.write_text("start: 2018-11-01\nend: 2020-03-31\nmonths: [11, 12, 1, 2, 3]\n"
                 "ingest: {kazr_source: offline, era5_source: offline}\n")
    cfg = load_pipeline_config(f)
    days = cfg.ingest.days()
    assert cfg.build.months == [11, 12, 1, 2, 3]                     # handed down like start and end
    assert len(days) == 151 + 152 and {d.month for d in days} == {11, 12, 1, 2, 3}   # 2020 is a leap year
    assert days[150] == date(2019, 3, 31) and days[151] == date(2019, 11, 1)
    assert cfg.build.days() == days
    items = ingest.plan(cfg.ingest, ("kazr", "era5"))
    assert {it.day for it in items if it.kind == "kazr"} == {d.isoformat() for d in days}
    assert sorted({it.month for it in items if it.kind == "era5"})[4:6] == ["2019-03", "2019-11"]
    # a build's recipe names the months when set; without them it is the recipe of the builds before
    from bzpipe.dataset.inputs import recipe_config

    assert recipe_config(cfg.build)["months"] == [11, 12, 1, 2, 3]
    assert "months" not in recipe_config(cfg.build.model_copy(update={"months": None}))
    # the split check counts the days in the months, not the summer between them
    one = BuildConfig(start=date(2019, 3, 30), end=date(2019, 11, 1), months=[3, 11])
    with pytest.raises(ConfigError, match=r"months \[3, 11\]\) spans 3.0 days"):
        one.check_split_blocks()


@pytest.mark.parametrize("months, message", [([0], "months must be distinct calendar months"),
                                             ([1, 1], "months must be distinct"),
                                             ([], "months must be distinct"),
                                             ([7], "no day of 2019-01-01..2019-01-02 is in months")])
def test_months_must_be_calendar_months_of_the_period(months, message):
    with pytest.raises(ValueError, match=message):
        IngestConfig(start=date(2019, 1, 1), end=date(2019, 1, 2), months=months)


def test_a_held_out_test_winter_and_its_short_days(tmp_path):
    """``split.test_from`` (the test is a later winter as a whole) and ``synthetic.hours_per_day_from``
    (the offline generator's short days from a date on), as the demo uses them."""
    from bzpipe.dataset.inputs import recipe_config
    from bzpipe.sources.synthetic import kazr_day_arrays

    f = tmp_path / "run.yaml"
    f.write_text("start: 2018-11-01\nend: 2020-03-31\nmonths: [11, 12, 1, 2, 3]\n"
                 "ingest: {synthetic: {hours_per_day: 6, hours_per_day_from: {2019-11-01: 1}, "
                 "time_step_s: 60}}\n"
                 "build: {split: {fractions: [0.8, 0.2, 0.0], test_from: 2019-11-01}}\n")
    cfg = load_pipeline_config(f)
    syn = cfg.ingest.synthetic
    assert [syn.hours_on(d) for d in (date(2018, 11, 1), date(2019, 10, 31), date(2019, 11, 1),
                                      date(2020, 3, 31))] == [6, 6, 1, 1]
    assert kazr_day_arrays("nsa", date(2019, 3, 31), syn, 7)["time"].size == 360       # 6 h of 1-min profiles
    assert kazr_day_arrays("nsa", date(2019, 11, 1), syn, 7)["time"].size == 60
    cfg.build.check_split_blocks()                                     # 151 days before, 152 from it on
    assert recipe_config(cfg.build)["split"]["test_from"] == "2019-11-01"
    plain = cfg.build.model_copy(update={"split": cfg.build.split.model_copy(update={"test_from": None})})
    assert "test_from" not in recipe_config(plain)["split"]            # the recipe of the builds before it
    # refused before any work, naming the numbers: no day from test_from on, or too few before it
    late = cfg.build.model_copy(update={"end": date(2019, 10, 31)})
    with pytest.raises(ConfigError, match=r"test_from 2019-11-01 leaves 151 day\(s\) .* and 0 from it on"):
        late.check_split_blocks()
    early = cfg.build.model_copy(update={"start": date(2019, 3, 28)})
    with pytest.raises(ConfigError, match=r"leaves 4 day\(s\) .* before it .* \(>= 6 days\)"):
        early.check_split_blocks()
    with pytest.raises(ValueError, match="their test fraction must be 0"):
        BuildConfig(split={"fractions": [0.6, 0.2, 0.2], "test_from": date(2019, 11, 1)})
    with pytest.raises(ValueError, match=r"hours must be in \(0, 24\]"):
        IngestConfig(synthetic={"hours_per_day_from": {date(2019, 11, 1): 25}})

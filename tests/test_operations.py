"""Real operations: the config chosen at run time, real-data example configs, bounded fan-out,
credentials checked first, quarantine visible as a state, artifacts a browser can open, and the
sample granule staged only for the offline CloudSat source."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path

import pytest
import yaml

from bzpipe.config import InferConfig, IngestConfig, PipelineConfig, load_pipeline_config
from bzpipe.errors import AuthenticationError, ConfigError
from bzpipe.store import Store
from flows import common

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "flows" / "configs"
TOKEN = "PLANTED-ops-arm-token-77aa"
CDS_KEY = "PLANTED-ops-cds-key-99bb"


def _tiny_offline(path: Path, store: Path, **extra) -> Path:
    data = {"store_root": str(store), "sites": ["nsa"], "start": "2019-01-01", "end": "2019-01-01",
            "ingest": {"fetch_met": False, "synthetic": {"time_step_s": 120.0, "hours_per_day": 1.0, "n_gates": 48}},
            **extra}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def no_choice(monkeypatch):
    """Neither the Prefect Variable nor $BZPIPE_CONFIG is set (unless a test sets them)."""
    values: dict[str, object] = {}
    monkeypatch.setattr(common, "variable_value", lambda name=common.CONFIG_VARIABLE: values.get(name))
    monkeypatch.delenv(common.CONFIG_ENV, raising=False)
    return values


# --------------------------------------------------------------------------- choosing the config


def test_config_order_parameter_variable_environment_demo(no_choice, monkeypatch, tmp_path):
    a = _tiny_offline(tmp_path / "a.yaml", tmp_path / "store-a")
    b = _tiny_offline(tmp_path / "b.yaml", tmp_path / "store-b")
    c = _tiny_offline(tmp_path / "c.yaml", tmp_path / "store-c")
    assert common.choose_config().path == str(REPO / common.DEMO_CONFIG)
    monkeypatch.setenv(common.CONFIG_ENV, str(c))
    assert common.resolve_config(IngestConfig).store_root == str(tmp_path / "store-c")
    no_choice[common.CONFIG_VARIABLE] = str(b)                    # the Variable wins over the environment
    choice = common.choose_config()
    assert choice.path == str(b) and choice.source == "the Prefect Variable 'bzpipe_config'"
    assert common.resolve_config(IngestConfig).store_root == str(tmp_path / "store-b")
    assert common.resolve_config(IngestConfig, config_path=str(a)).store_root == str(tmp_path / "store-a")
    # a relative path is taken from the checkout too (the deployments' working directory)
    no_choice[common.CONFIG_VARIABLE] = "flows/configs/paper-nsa-oli.yaml"
    monkeypatch.chdir(tmp_path)
    assert common.choose_config().path == str(CONFIGS / "paper-nsa-oli.yaml")


def test_a_variable_with_overrides_and_stage_filtering(no_choice, tmp_path):
    no_choice[common.CONFIG_VARIABLE] = {"path": "flows/configs/offline-demo.yaml",
                                         "overrides": [f"store_root={tmp_path}/s", "train.epochs=2"]}
    ing = common.resolve_config(IngestConfig)            # train.epochs does not concern the ingest stage
    assert ing.store_root == f"{tmp_path}/s"
    pipe = common.resolve_pipeline_config(overrides=["train.lr=0.5"])
    assert pipe.train.epochs == 2 and pipe.train.lr == 0.5 and pipe.build.store_root == f"{tmp_path}/s"
    # the JSON text of that object works as well (what `prefect variable set` may store)
    no_choice[common.CONFIG_VARIABLE] = json.dumps({"path": "flows/configs/offline-demo.yaml"})
    assert common.choose_config().path == str(REPO / common.DEMO_CONFIG)


@pytest.mark.parametrize("value, needle", [
    ("configs/nowhere.yaml", "config file 'configs/nowhere.yaml' named by the Prefect Variable 'bzpipe_config' "
                             "does not exist (looked for "),
    ({"path": "x.yaml", "extra": 1}, "expected a path or"),
    ("{not json", "not a path and not valid JSON"),
    ("   ", "the Prefect Variable 'bzpipe_config' is set but empty or not a path"),
    (42, "is set but empty or not a path: 42"),
])
def test_a_variable_that_points_nowhere_fails_with_the_name(no_choice, value, needle):
    no_choice[common.CONFIG_VARIABLE] = value
    with pytest.raises(ConfigError) as ei:
        common.resolve_config(IngestConfig)
    assert needle in str(ei.value)


def test_an_environment_variable_that_points_nowhere_fails_with_the_name(no_choice, monkeypatch):
    monkeypatch.setenv(common.CONFIG_ENV, "/etc/bzpipe/missing.yaml")
    with pytest.raises(ConfigError, match=r"config file '/etc/bzpipe/missing.yaml' named by the environment "
                                          r"variable BZPIPE_CONFIG does not exist \(looked for /etc/bzpipe/missing.yaml\)"):
        common.choose_config()


def test_config_switch_validates_before_it_sets(no_choice, tmp_path, monkeypatch):
    from flows.config_switch import variable_value_for

    value, found = variable_value_for("flows/configs/paper-nsa-oli.yaml")
    assert value == "flows/configs/paper-nsa-oli.yaml" and found == str(CONFIGS / "paper-nsa-oli.yaml")
    value, _ = variable_value_for(str(CONFIGS / "cloudsat-reprocess.yaml"), ["store_root=s3://b/p"])
    assert value == {"path": "flows/configs/cloudsat-reprocess.yaml", "overrides": ["store_root=s3://b/p"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0}\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        variable_value_for(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        variable_value_for("nope.yaml")


# --------------------------------------------------------------------------- real-data example configs


@pytest.mark.parametrize("name", ["paper-nsa-oli.yaml", "cloudsat-reprocess.yaml"])
def test_real_configs_parse_and_name_the_real_datastreams(name):
    from bzpipe.ingest import arm_datastream, plan_era5

    cfg = load_pipeline_config(CONFIGS / name)
    ing = cfg.ingest
    assert (ing.kazr_source, ing.era5_source) == ("arm", "cds")
    assert [s.name for s in ing.site_objects()] == ["nsa", "oli"]
    # the CloudSat-calibrated KAZR-ARSCL VAP, the surface met of the cold filter (paper.md 1.1)
    assert [arm_datastream(ing, s, k) for s in ("nsa", "oli") for k in ("kazr", "met")] == [
        "nsaarsclkazrcloudsatC1.c1", "nsametC1.b1", "oliarsclkazrcloudsatM1.c1", "olimetM1.b1"]
    # the paper's period: NSA from 2012-03, OLI to 2017-11 (39 months of FINAL_PERIODS inside it)
    assert (ing.start, ing.end) == (date(2012, 3, 1), date(2017, 11, 30))
    months = {i.month for i in plan_era5(ing)}
    assert len(months) == 69 and {"2012-03", "2015-11", "2017-04", "2017-11"} <= months
    assert min(ing.era5_levels_hpa) == 300 and len(ing.era5_levels_hpa) == 20      # the lowest 20 levels
    assert cfg.build.grid.n_heights == 128 and cfg.build.patch.width == 128 and cfg.build.patch.blind_zone_rows == 16
    assert cfg.infer.cloudsat_source == "landing" and cfg.infer.era5_source == "cds"
    assert cfg.infer.run_name == cfg.train.run_name == "paper-nsa-oli" and cfg.train.dataset == cfg.build.version
    assert cfg.infer.expected_release == "R05"


def test_paper_config_asks_arm_live_for_those_datastreams(tmp_path, monkeypatch):
    """The names reach the service as it spells them (the ARM Live double lists what it holds)."""
    from doubles.armlive import ArmLiveDouble

    from bzpipe.credentials import ArmCredentials
    from bzpipe.ingest import plan

    served = tmp_path / "served"
    served.mkdir()
    (served / "nsaarsclkazrcloudsatC1.c1.20150101.000000.nc").write_bytes(b"x")
    (served / "olimetM1.b1.20150101.000000.cdf").write_bytes(b"x")
    with ArmLiveDouble("u", TOKEN, served) as arm:
        cfg = load_pipeline_config(CONFIGS / "paper-nsa-oli.yaml",
                                   [f"ingest.arm_live_url={arm.url}", "start=2015-01-01", "end=2015-01-01"])
        items = plan(cfg.ingest, ("kazr", "met"), arm=ArmCredentials("u", TOKEN))
        asked = sorted(s.query["ds"][0] for s in arm.requests_to("/armlive/data/query"))
    assert asked == ["nsaarsclkazrcloudsatC1.c1", "nsametC1.b1", "oliarsclkazrcloudsatM1.c1", "olimetM1.b1"]
    assert sorted(i.key for i in items) == ["raw/kazr/nsa/nsaarsclkazrcloudsatC1.c1.20150101.000000.nc",
                                            "raw/met/oli/olimetM1.b1.20150101.000000.cdf"]


# --------------------------------------------------------------------------- bounded fan-out


class InFlight:
    """Counts the calls running at once (and the most there ever were)."""

    def __init__(self) -> None:
        self.lock, self.now, self.max = threading.Lock(), 0, 0

    def __call__(self, i: int, seconds: float) -> int:
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1
        return i


def test_bounded_keeps_at_most_limit_unfinished_futures():
    from flows.fanout import bounded

    work = InFlight()
    with ThreadPoolExecutor(max_workers=64) as pool:
        done = [item for item, fut in bounded(lambda i: pool.submit(work, i, 0.0005), range(1000), 7)
                if fut.result() == item]
    assert sorted(done) == list(range(1000)) and work.max <= 7
    with pytest.raises(ValueError):
        list(bounded(lambda i: None, [1], 0))


@pytest.mark.prefect
def test_hundreds_of_prefect_tasks_with_at_most_limit_in_flight(prefect_server):
    """300 small task runs (far more than the limit of 8 and the 64 runner threads) through the flows'
    fan-out: never more than the limit submitted at once."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.fanout import Progress, bounded

    lock, state = threading.Lock(), {"submitted": 0, "finished": 0, "outstanding_max": 0}
    running = InFlight()

    @task(cache_policy=NO_CACHE, persist_result=False)
    def small(i: int) -> int:
        return 2 * running(i, 0.002)

    def submit(i: int):
        with lock:
            state["submitted"] += 1
            state["outstanding_max"] = max(state["outstanding_max"], state["submitted"] - state["finished"])
        return small.submit(i)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=64))
    def fan(n: int, limit: int) -> list[int]:
        progress = Progress(n, "fan-out test")
        out = []
        for _, fut in bounded(submit, range(n), limit):
            out.append(fut.result())
            with lock:
                state["finished"] += 1
            progress.advance()
        return out

    out = fan(300, 8)
    assert sorted(out) == [2 * i for i in range(300)]
    assert state["outstanding_max"] <= 8 and running.max <= 8, (state, running.max)


# --------------------------------------------------------------------------- credentials


def test_missing_credentials_name_what_and_where(monkeypatch, tmp_path):
    from flows.ingest import check_credentials

    for var in ("ARM_USERNAME", "ARM_TOKEN", "CDSAPI_URL", "CDSAPI_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "none"))
    monkeypatch.setattr("flows.ingest._secret", lambda name: None)
    cfg = load_pipeline_config(CONFIGS / "paper-nsa-oli.yaml").ingest
    with pytest.raises(AuthenticationError, match=r"no ARM Live credentials: set ARM_USERNAME and ARM_TOKEN.*"
                                                  r"'arm-username' and 'arm-token'.*bzpipe-credentials"):
        check_credentials(cfg)
    monkeypatch.setenv("ARM_USERNAME", "someone")
    monkeypatch.setenv("ARM_TOKEN", TOKEN)
    with pytest.raises(AuthenticationError, match=r"no CDS API key: set CDSAPI_URL and CDSAPI_KEY.*~/.cdsapirc"
                                                  r".*'cds-api-key'.*worker") as ei:
        check_credentials(cfg)
    assert TOKEN not in str(ei.value)
    monkeypatch.setenv("CDSAPI_KEY", CDS_KEY)
    found = check_credentials(cfg)
    assert found[0] == "ARM Live (user 'someone')" and found[1].startswith("CDS (")
    assert all(TOKEN not in f and CDS_KEY not in f for f in found)
    assert check_credentials(cfg.model_copy(update={"kazr_source": "offline", "era5_source": "offline"})) == []


def test_an_s3_store_without_aws_credentials_fails_in_the_first_check(monkeypatch, tmp_path):
    from flows.ingest import check_credentials

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")              # no instance-role lookup
    cfg = load_pipeline_config(CONFIGS / "offline-demo.yaml").ingest.model_copy(
        update={"store_root": "s3://bucket/bzpipe"})
    with pytest.raises(AuthenticationError, match=r"s3://bucket/bzpipe needs AWS credentials.*AWS_ACCESS_KEY_ID"
                                                  r".*bzpipe-store"):
        check_credentials(cfg)
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    found = check_credentials(cfg)
    assert found == ["S3 store s3://bucket/bzpipe (credentials from env)"] and secret not in found[0]
    assert check_credentials(cfg.model_copy(update={"store_root": str(tmp_path)})) == []


@pytest.mark.prefect
def test_a_real_config_without_credentials_fails_in_the_first_task(prefect_server, monkeypatch, tmp_path, capfd):
    import flows.pipeline as fp
    from flows.ingest import check_credentials_task

    for var in ("ARM_USERNAME", "ARM_TOKEN", "CDSAPI_URL", "CDSAPI_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ARM_TOKEN", TOKEN)               # half a credential: the user name is missing
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "none"))
    ran: list[str] = []
    checked = check_credentials_task.with_options(on_failure=[lambda task, run, state: ran.append(task.name)])
    monkeypatch.setattr(fp, "check_credentials_task", checked)
    for stage in ("ingest", "build_dataset", "train", "evaluate"):      # nothing after it may start
        monkeypatch.setattr(fp, stage, lambda *a, _s=stage, **k: ran.append(_s))
    cfg = load_pipeline_config(CONFIGS / "paper-nsa-oli.yaml", [f"store_root={tmp_path / 'store'}"])
    t0 = time.monotonic()
    state = fp.pipeline(config=cfg, return_state=True)
    assert state.is_failed() and time.monotonic() - t0 < 60
    assert ran == ["check-credentials"]                                 # failed there, and nothing ran after
    assert "AuthenticationError" in state.message and "ARM_USERNAME" in state.message
    assert "bzpipe-credentials" in state.message and TOKEN not in state.message
    assert not (tmp_path / "store" / "raw").exists()
    out, err = capfd.readouterr()
    assert TOKEN not in out + err


# --------------------------------------------------------------------------- sample granule, quarantine


def test_the_sample_granule_only_for_the_offline_cloudsat_source(tmp_path):
    from flows.pipeline import cloudsat_source, stage_sample_granule

    demo = load_pipeline_config(CONFIGS / "offline-demo.yaml")
    assert cloudsat_source(demo) == "offline"
    real = load_pipeline_config(CONFIGS / "paper-nsa-oli.yaml", [f"store_root={tmp_path}"])
    assert cloudsat_source(real) == "landing"
    # unset: follows the ingest sources; set explicitly: wins
    arm_only = PipelineConfig.model_validate({"ingest": {"kazr_source": "arm"}})
    assert cloudsat_source(arm_only) == "landing"
    forced = PipelineConfig.model_validate({"infer": {"cloudsat_source": "offline"}, "ingest": {"kazr_source": "arm"}})
    assert cloudsat_source(forced) == "offline"
    with pytest.raises(ValueError, match="no synthetic granule goes into the landing area"):
        stage_sample_granule.fn(real)
    assert not (tmp_path / "landing").exists()


@pytest.mark.prefect
def test_a_quarantined_granule_ends_in_a_state_named_for_it(prefect_server, store_root, tmp_path):
    from _infer_helpers import save_tiny_model, write_granule

    from flows.reprocess import reprocess_granule

    save_tiny_model(store_root, "tiny", width=64)
    src = write_granule(tmp_path / "src", n=64, number=67401, start=datetime(2019, 1, 3, 1, 0))
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[:4000])
    shutil.rmtree(tmp_path / "src")
    cfg = InferConfig(store_root=str(store_root), run_name="tiny", mc_passes=2, window_overlap=16, batch_size=32,
                      n_workers=1, plot=False)
    state = reprocess_granule(str(bad), config=cfg, return_state=True)
    assert state.is_completed() and state.name == "Quarantined"
    assert state.message.startswith(f"{bad.name} quarantined (") and "corrupt" in state.message
    res = state.result()
    assert res["status"] == "quarantined" and res["granule"] == bad.name
    assert reprocess_granule(str(bad), config=cfg)["status"] == "quarantined"   # callers still get the result


# --------------------------------------------------------------------------- links and images


def test_links_presigned_https_for_s3_public_url_or_none(s3_root, monkeypatch, tmp_path):
    from flows.links import PUBLIC_URL_ENV, browser_url, link_markdown

    monkeypatch.delenv(PUBLIC_URL_ENV, raising=False)
    s3 = Store(s3_root)
    s3.write_bytes("reports/run/index.html", b"<html></html>")
    url = browser_url(s3, "reports/run/index.html")
    assert url.startswith("http") and "Signature=" in url          # https on AWS; the moto endpoint is http
    from urllib.parse import parse_qs, urlsplit

    q = parse_qs(urlsplit(url).query)
    expires = int(q["X-Amz-Expires"][0]) if "X-Amz-Expires" in q else int(q["Expires"][0]) - int(time.time())
    assert 7 * 24 * 3600 - 120 <= expires <= 7 * 24 * 3600
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:                # the link opens without credentials
        assert r.read() == b"<html></html>"
    local = Store(tmp_path / "store")
    assert browser_url(local, "models/x/loss-curve.png") is None
    assert link_markdown(local, "models/x/loss-curve.png") == f"`{local.uri('models/x/loss-curve.png')}`"
    monkeypatch.setenv(PUBLIC_URL_ENV, "https://data.example.org/bzpipe/")
    assert browser_url(local, "models/x/loss-curve.png") == "https://data.example.org/bzpipe/models/x/loss-curve.png"
    assert link_markdown(local, "a/b.png", "plot") == "[plot](https://data.example.org/bzpipe/a/b.png)"


@pytest.mark.prefect
def test_image_artifacts_by_url_or_embedded(prefect_server, s3_root, monkeypatch, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.links import PUBLIC_URL_ENV, publish_image

    monkeypatch.delenv(PUBLIC_URL_ENV, raising=False)
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    local = Store(tmp_path / "store")
    local.write_bytes("p/a.png", png)
    s3 = Store(s3_root)
    s3.write_bytes("p/b.png", png)
    from prefect import flow

    @flow(name="ops-image-artifacts")
    def publish_both() -> tuple[str, str]:   # as the flows call it: inside a run (outside one is deprecated)
        return (publish_image(local, "p/a.png", artifact_key="ops-image-local", title="a"),
                publish_image(s3, "p/b.png", artifact_key="ops-image-s3"))

    assert publish_both() == ("inline", "url")
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["ops-image-local", "ops-image-s3"])))}
    assert arts["ops-image-local"].type == "markdown" and "(data:image/png;base64," in arts["ops-image-local"].data
    assert arts["ops-image-s3"].type == "image" and "Signature=" in arts["ops-image-s3"].data

"""The ``bzpipe`` command line: config, generate -> inspect round trip, manifest."""

import yaml

from bzpipe.cli import main
from bzpipe.store import Store


def test_config_prints_resolved_values(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("store_root: /data/x\ntrain: {epochs: 4}\n")
    assert main(["config", "--config", str(f), "--set", "build.patch.width=32"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["train"]["epochs"] == 4 and out["build"]["patch"]["width"] == 32
    assert out["infer"]["store_root"] == "/data/x"


def test_invalid_config_exits_2_with_message(capsys):
    assert main(["config", "--set", "train.batch_size=0"]) == 2
    assert "train.batch_size" in capsys.readouterr().err


def test_generate_then_inspect_every_file(tmp_path, capsys):
    out = tmp_path / "sample"
    rc = main(["generate", str(out), "--set", "sites=[oli]", "--set", "start=2019-01-05",
               "--set", "end=2019-01-05", "--set", "ingest.synthetic.hours_per_day=1",
               "--set", "ingest.synthetic.cloudsat_profiles=300"])
    assert rc == 0
    files = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    names = sorted(p.split("/")[-1] for p in files)
    assert names[0].endswith("_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf")
    assert "era5_oli_201901.nc" in names
    assert "oliarsclkazr1kolliasM1.c0.20190105.000000.nc" in names
    assert "olimetM1.b1.20190105.000000.cdf" in names
    assert main(["inspect", *files]) == 0
    text = capsys.readouterr().out
    assert "reflectivity" in text and "profile: 300" in text and "pressure_level" in text


def test_inspect_names_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "granule.hdf"
    bad.write_text("not hdf at all")
    assert main(["inspect", str(bad)]) == 2
    assert "granule.hdf" in capsys.readouterr().err


def test_manifest_verify_detects_tampering(store_root, capsys):
    s = Store(store_root)
    s.write_bytes("raw/a.bin", b"payload")
    assert main(["manifest", str(store_root), "--verify"]) == 0
    (store_root / "raw" / "a.bin").write_bytes(b"tampered")
    assert main(["manifest", str(store_root), "--verify"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_inspect_opens_every_real_sample(shared_data, capsys):
    files = sorted(str(p) for p in shared_data.rglob("*") if p.is_file() and p.suffix != ".md")
    assert len(files) == 9
    assert main(["inspect", *files]) == 0
    text = capsys.readouterr().out
    # KaZR / MMCR curtains, ERA-5 on pressure levels (GRIB and netCDF), the IFS column, the CloudSat granule
    assert text.count("== ") == 9
    assert "profile: 36950" in text and "level: 137" in text and "pressure_level" in text

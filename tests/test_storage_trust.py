"""What a search's trials receive and what `--resume` trusts: shipped proxies are verified, storage needs cmidd's
fingerprint."""

from __future__ import annotations

import json

import pytest

from cmidd import proxies as proxy_zoo
from cmidd.cli import main
from cmidd.config import ProxiesCfg
from cmidd.errors import IntegrityError


@pytest.fixture(scope="module")
def proxy_folder(tmp_path_factory, digits):
    cfg = ProxiesCfg(set="convnet-x1", epochs=1)
    folder = tmp_path_factory.mktemp("proxies") / "set"
    proxy_zoo.save(folder, cfg, digits, proxy_zoo.pretrain(cfg, digits, 0))
    return folder


def test_a_packed_proxy_set_unpacks_verified_elsewhere(proxy_folder, tmp_path, digits):
    files = proxy_zoo.pack(proxy_folder)
    assert set(files) == {"manifest.json", *(e["file"] for e in json.loads(files["manifest.json"])["proxies"])}
    dest = proxy_zoo.unpack(files, tmp_path / "node2" / "set")
    assert len(proxy_zoo.load(dest, digits)) == 1
    assert proxy_zoo.unpack(files, dest) == dest  # a verified copy is kept as it is

    name = next(k for k in files if k != "manifest.json")
    bad = {**files, name: files[name][:-1] + bytes([files[name][-1] ^ 1])}
    with pytest.raises(IntegrityError, match="sha256"):
        proxy_zoo.unpack(bad, tmp_path / "other")
    assert not (tmp_path / "other").exists()
    with pytest.raises(IntegrityError, match="leaves the folder"):
        proxy_zoo.unpack({**files, "../escape.pt": b"x"}, tmp_path / "third")


def test_resume_refuses_a_storage_folder_without_cmidds_fingerprint(tmp_path, monkeypatch, capsys):
    store = tmp_path / "storage"
    (store / "tune").mkdir(parents=True)
    (store / "tune" / "tuner.pkl").write_bytes(b"not cmidd's")
    (store / "parent_run_id").write_text("0" * 32)
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "digits_dmcmi.yaml"
    assert main(["search", str(space), "--resume", "--set", f"storage={store}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "space.json" in err[0] and "refusing" in err[0], err
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


def test_tune_storage_is_a_shared_folder_or_a_pyarrow_uri():
    from pathlib import Path

    from cmidd.config import load_search
    from cmidd.errors import ConfigError

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "digits_dmcmi.yaml"
    cfg = load_search(space)
    assert cfg.tune_location == (str(cfg.storage_dir), "tune")
    cfg = load_search(space, ["tune_storage=s3://bucket/searches/"])
    assert cfg.tune_location == ("s3://bucket/searches", cfg.name)
    assert load_search(space, ["tune_storage=/shared/tune"]).tune_location == ("/shared/tune", cfg.name)
    for bad in ("relative/tune", "ftp://host/x", "s3://"):
        with pytest.raises(ConfigError, match="tune_storage"):
            load_search(space, [f"tune_storage={bad}"])

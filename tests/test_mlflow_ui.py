"""What MLflow's UI shows first, against a real sqlite store: the training-view link (checked against the installed
UI's own code), the key numbers under names that sort first, the gain over random-real on versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmidd.tracking import (KEY_ACC, KEY_GAIN, KEY_LAMBDA, TAG_GAIN, TRAINING_VIEW, best_set, client_for, gain_text,
                            tag_gains, ui_hint, ui_url)


def test_links_open_the_training_view_of_the_installed_ui():
    """MLflow 3.17's UI picks an experiment's view from its 'GenAI | Model training' switch (default GenAI),
    not from the ``mlflow.experimentKind`` tag; the URL parameter ``workflowType`` overrides the switch. The
    installed UI bundle must still read that parameter and know the value cmidd's links carry."""
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(p.read_text(errors="ignore") for p in bundle.glob("main.*.js"))
    key, value = TRAINING_VIEW.split("=")
    assert f'get("{key}")' in text and f'MACHINE_LEARNING="{value}"' in text
    assert ui_url("http://127.0.0.1:5000/", "3") == f"http://127.0.0.1:5000/#/experiments/3?{TRAINING_VIEW}"
    assert ui_url("http://h:1", "3", "abc") == f"http://h:1/#/experiments/3/runs/abc?{TRAINING_VIEW}"
    assert ui_url("sqlite:////tmp/m.db", "3") is None
    hint = ui_hint("sqlite:////tmp/m.db", "3")
    assert "mlflow server --backend-store-uri sqlite:////tmp/m.db --host 127.0.0.1" in hint and TRAINING_VIEW in hint


def test_key_numbers_sort_first_and_versions_carry_their_gain(tmp_path, digits):
    from conftest import tiny_distill

    from cmidd.app import execute
    from cmidd.config import parse_job
    from cmidd.lam import LAM_KEY
    from cmidd.names import CROSS_ARCH_MEAN
    from cmidd.protocol import protocol_of_job
    from cmidd.scoring import SCORER
    from cmidd.tracking._baselines import log_random_real_draws

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = parse_job(tiny_distill(tmp_path, cmi__lam=2.0, method__iterations=2))
    done = execute(job, track=True, uri=uri, data=digits)
    client = client_for(uri)
    run = client.get_run(done.run_id)
    m = run.data.metrics
    assert m[KEY_ACC] == m[CROSS_ARCH_MEAN] and m[KEY_LAMBDA] == m.get(LAM_KEY, 2.0) == 2.0
    assert run.data.params[KEY_LAMBDA] == "2.0"
    if "cmi_ratio" in m:
        assert m["_key/cmi_ratio"] == m["cmi_ratio"]
    names = sorted(m)  # code-point order (the UI's column picker and charts): the key numbers first
    assert all(n.startswith("_key/") for n in names[:len([k for k in m if k.startswith("_key/")])])
    assert sorted(m, key=str.lower)[0].startswith("_key/") and names[0].startswith("_key/")

    # random-real draws under the set's protocol: the version gets its paired gain as a tag, its run as a metric
    protocol = protocol_of_job(job, digits)
    log_random_real_draws(SCORER, digits, job.ipc, protocol, job.eval, job.seed, job.name, own_draw=job.seed, uri=uri)
    answer = best_set("digits", job.ipc, uri=uri, protocol=protocol.id)
    tagged = tag_gains(client, answer)
    assert [g["version"] for g in tagged] == [answer["version"]]
    mv = client.get_model_version(answer["name"], str(answer["version"]))
    assert mv.tags[TAG_GAIN] == gain_text(tagged[0]) and mv.tags[TAG_GAIN].endswith(f"pt (n={tagged[0]['n']})")
    assert client.get_run(done.run_id).data.metrics[KEY_GAIN] == pytest.approx(tagged[0]["gain"])
    assert mv.description.endswith(f"; gain over random-real {gain_text(tagged[0])}")
    tag_gains(client, answer)  # tagged again (a later search): the description keeps one gain, the latest
    again = client.get_model_version(answer["name"], str(answer["version"])).description
    assert again == mv.description and again.count("gain over random-real") == 1
    assert tag_gains(client, {**answer, "baseline": None}) == []  # no draws logged: nothing to tag
    # short tags: accuracies and the protocol's id and summary; spreads, ECE and the protocol's JSON stay on the run
    assert not [k for k in mv.tags if k.startswith(("acc_std/", "ece/")) or k == "protocol.json"]
    assert "protocol.json" in run.data.tags and mv.tags["protocol.id"] == run.data.tags["protocol.id"]
    assert mv.tags["acc/cross_arch_mean"] == f"{m[CROSS_ARCH_MEAN]:.6g}"

"""``python -m experiments.stream``: several videos as one batch of streams, generated default, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("av")

import co3d_jax  # noqa: E402
from co3d_jax.data.video import decode_all  # noqa: E402
from co3d_jax.params import save_params  # noqa: E402
from experiments import stream as S  # noqa: E402
from helpers import write_video  # noqa: E402

OPTS = {"image_size": 32, "depth_factor": 0.6, "num_classes": 5}
ARGS = ["--model", "cox3d_s_13", "--image-size", "32", "--option", "depth_factor=0.6", "--option", "num_classes=5"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    model = co3d_jax.create_model("cox3d_s_13", **OPTS)
    params = model.init(jax.random.key(3))
    save_params(str(d / "w.npz"), params, {"arch": "cox3d_s_13", "model_options": json.dumps(OPTS)})
    write_video(str(d / "a.mp4"), 300, hw=(48, 64), seed=1)   # 300 frames at 30 fps -> 50 at rate 6
    write_video(str(d / "b.mp4"), 276, hw=(40, 40), seed=2)   # a shorter stream: 46 frames
    (d / "bad.mp4").write_bytes(b"not a video at all")
    return d, model, params


def test_two_videos_as_one_batch_equal_direct_stream(setup, capsys):
    d, model, params = setup
    out = d / "res.json"
    rc = S.main(ARGS + ["--weights", str(d / "w.npz"), "--video", str(d / "a.mp4"), "--video", str(d / "b.mp4"),
                        "--top", "3", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "(warming up)" in printed and "step latency" in printed
    res = json.loads(out.read_text())
    assert res["delay"] == model.delay == 22  # 2 (stem) + 8 blocks + 12 (head window 13)
    mean, std = model.normalisation
    for i, name in enumerate(["a.mp4", "b.mp4"]):
        frames, fps = decode_all(str(d / name))
        clip = S.prepare(frames[np.arange(0, len(frames), 6)], 32, mean, std)
        _, ref = model.stream_fn()(params, model.init_state(1), jnp.asarray(clip)[None])
        recs = [r for r in res["frames"] if r["stream"] == i]
        assert [r["frame"] for r in recs] == list(range(model.delay, len(clip)))
        for r in recs:
            want = np.argsort(-np.asarray(ref.scores[0, r["frame"]]))[:3]
            assert [t["index"] for t in r["top"]] == list(want)
            np.testing.assert_allclose([t["score"] for t in r["top"]], np.asarray(ref.scores[0, r["frame"]])[want],
                                       rtol=1e-5)
    assert len(res["latency_ms"]) == 50


def test_generated_video_runs_with_random_weights(capsys):
    assert S.main(ARGS + ["--frames", "24"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "frame   22" in printed


def test_bad_inputs_give_one_line_errors(setup, capsys):
    d, _, _ = setup
    assert S.main(ARGS + ["--video", str(d / "bad.mp4")]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    assert S.main(ARGS + ["--video", str(d / "missing.mp4")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert S.main(["--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert S.main(ARGS + ["--weights", str(d / "bad.mp4")]) == 2
    assert "bad.mp4" in capsys.readouterr().err

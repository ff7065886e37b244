"""Security and data integrity of what a run reads and writes.

* external data is read only from plain files inside the model's folder (no symbolic
  links, `..` or absolute paths), on the in-memory and the file-backed path;
* every written model passes onnx.checker before it replaces anything, and an already
  quantized model is not quantized again;
* all or nothing: every output path is checked before any work, the outputs are
  committed together at the end, and a run that fails or is interrupted leaves no new
  file (and replaces none).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import builders as b
import onnx_compress as oc
from onnx_compress import cli, files, ir
from onnx_compress.runtime import quantize as quantization
from onnx_compress.errors import ModelLoadError, ParameterError

MARKER = b"OUTSIDE-SECRET-" * 300  # 4,500 bytes: a weight's worth


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in sorted(root.rglob("*"))}


def _external_model(folder: Path, location: str = "w.bin") -> Path:
    """A MatMul model whose 33x33 weight lives in `folder/location` (written as given)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((33, 33)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 33])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 33])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    return folder / "model.onnx"


@pytest.fixture()
def symlinked(tmp_path) -> tuple[Path, Path]:
    """model/model.onnx whose external data file is a symlink to a file outside its folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(MARKER[: 33 * 33 * 4].ljust(33 * 33 * 4, b"\0"))
    src = _external_model(tmp_path / "model")
    (tmp_path / "model" / "w.bin").unlink()
    os.symlink(secret, tmp_path / "model" / "w.bin")
    return src, tmp_path


@pytest.fixture()
def linked_folder(tmp_path) -> tuple[Path, Path]:
    """The data file in a folder of the model's folder that is a symlink to an outside folder."""
    src = _external_model(tmp_path / "outside")
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(tmp_path / "outside", model / "sub")
    proto = onnx.load(str(src), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "sub/w.bin"
    onnx.save(proto, str(model / "model.onnx"))
    return model / "model.onnx", tmp_path


@pytest.mark.parametrize("file_backed", [False, True], ids=["in-memory", "file-backed"])
@pytest.mark.parametrize("fixture", ["symlinked", "linked_folder"])
def test_external_data_through_a_symlink_is_refused(fixture, file_backed, request, monkeypatch, capsys):
    src, root = request.getfixturevalue(fixture)
    if file_backed:
        monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", 1)
    with pytest.raises(ModelLoadError, match="symbolic link"):
        ir.load(src)
    before = _listing(root)
    out = src.parent / "out.onnx"
    for argv in (["inspect", str(src)], ["compress", str(src), "-o", str(out), "--scheme", "weight_svd",
                                         "--ratio", "0.5"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "symbolic link" in err[0], err
    assert _listing(root) == before  # nothing written, nothing copied
    assert not any(MARKER[:30] in data for name, data in _listing(root).items() if not name.startswith("outside"))


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"])
@pytest.mark.parametrize("file_backed", [False, True], ids=["in-memory", "file-backed"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location, file_backed, monkeypatch):
    src = _external_model(tmp_path / "model")
    proto = onnx.load(str(src), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(src))
    if file_backed:
        monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", 1)
    with pytest.raises(ModelLoadError, match="invalid external data location"):
        ir.load(src)


def test_plain_external_data_still_loads(tmp_path, monkeypatch):
    src = _external_model(tmp_path / "model")
    assert ir.external_files(src) == [(tmp_path / "model" / "w.bin").resolve()]
    for limit in (ir.FILE_BACKED_LIMIT, 1):
        monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", limit)
        assert ir.load(src).graph.initializer[0].name == "w"


# ------------------------------------------------------------------ checked models
@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qdq")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((8, 1, 12, 12)).astype(np.float32))
    onnx.save(b.cnn_model(), str(folder / "cnn.onnx"))
    assert cli.main(["-q", "quantize", str(folder / "cnn.onnx"), "-o", str(folder / "q.onnx"),
                     "--data", str(folder / "calib.npz")]) == 0
    return folder / "q.onnx"


def test_an_already_quantized_model_is_refused(qdq_model, capsys):
    folder = qdq_model.parent
    with pytest.raises(ParameterError, match="already quantized"):
        quantization.quantize(qdq_model, folder / "calib.npz")
    before = _listing(folder)
    assert cli.main(["quantize", str(qdq_model), "-o", str(folder / "qq.onnx"), "--data",
                     str(folder / "calib.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already quantized" in err[0] and str(qdq_model) in err[0]
    assert _listing(folder) == before


def test_an_invalid_model_is_never_written(tmp_path):
    model = b.cnn_model()
    model.graph.node[1].output[0] = model.graph.node[0].output[0]  # two writers of one tensor
    with pytest.raises(ModelLoadError, match="not valid ONNX"):
        ir.save(model, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- all or nothing
@pytest.fixture()
def cnn(tmp_path) -> Path:
    onnx.save(b.cnn_model(), str(tmp_path / "cnn.onnx"))
    return tmp_path / "cnn.onnx"


def _compress(src: Path, *extra: str) -> list[str]:
    return ["-q", "compress", str(src), "-o", str(src.parent / "out.onnx"), "--scheme", "weight_svd",
            "--ratio", "0.5", *extra]


@pytest.mark.parametrize("flag", ["--stats", "--report", "-o"])
def test_an_output_path_that_is_a_folder_fails_before_any_work(cnn, flag, capsys, monkeypatch):
    (cnn.parent / "folder").mkdir()
    argv = _compress(cnn, flag, str(cnn.parent / "folder"))
    monkeypatch.setattr(oc.api, "compress", lambda *a, **k: pytest.fail("work started"))
    before = _listing(cnn.parent)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0], err
    assert _listing(cnn.parent) == before


def test_scores_out_folder_fails_before_the_dictionary(cnn, tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 12, 12), np.float32))
    (tmp_path / "s").mkdir()
    from onnx_compress.search import dictionary as greedy

    monkeypatch.setattr(greedy, "build_dictionary", lambda *a, **k: pytest.fail("dictionary built"))
    argv = ["compress", str(cnn), "-o", str(tmp_path / "out.onnx"), "--scheme", "weight_svd", "--target", "0.5",
            "--data", str(tmp_path / "d.npz"), "--scores-out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(ParameterError, match="is a folder"):  # the library too
        oc.compress_auto(cnn, "weight_svd", 0.5, lambda s, i, c: 1.0, scores_out=tmp_path / "s")


def test_unwritable_output_folder_fails_before_any_work(cnn, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(_compress(cnn, "--stats", str(locked / "s.json"))) == 2
        assert "not writable" in capsys.readouterr().err
        assert list(locked.iterdir()) == [] and not (tmp_path / "out.onnx").exists()
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("stage", ["stats", "report"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_a_failure_after_the_model_is_written_leaves_nothing(cnn, stage, error, capsys, monkeypatch):
    """Ctrl-C or a failing write at the last moment: no out.onnx without its stats and report,
    and an output that existed before is not replaced."""
    from onnx_compress import report

    folder = cnn.parent
    (folder / "out.onnx").write_bytes(b"previous run")
    module, name = {"stats": (files, "write_text"), "report": (report, "render")}[stage]

    def failing(*args, **kwargs):
        raise error("stopped here")

    saved = []
    real_save = ir.save
    monkeypatch.setattr(ir, "save", lambda *a, **k: (saved.append(a[1]), real_save(*a, **k)))
    monkeypatch.setattr(module, name, failing)
    before = _listing(folder)
    code = cli.main(_compress(cnn, "--stats", str(folder / "s.json"), "--report", str(folder / "r.html")))
    assert saved, "the model was not written before the failure"
    assert code == (130 if error is KeyboardInterrupt else 1)
    capsys.readouterr()
    assert _listing(folder) == before


def test_the_commit_holds_ctrl_c_until_every_file_is_in_place(tmp_path):
    import signal

    outs = files.Outputs({})
    paths = [outs.add(tmp_path / f"f{i}.txt", "output") for i in range(3)]
    for p in paths:
        p.write_text("x")
    real = os.replace
    moved = []

    def replace(a, b):
        moved.append(b)
        if len(moved) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        real(a, b)

    os.replace = replace
    try:
        with pytest.raises(KeyboardInterrupt):
            outs.commit()
    finally:
        os.replace = real
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]


def test_outputs_refuse_inputs_and_duplicates(tmp_path):
    src = _external_model(tmp_path / "m")
    outs = files.Outputs({src: "the input model", **{p: "its data" for p in ir.external_files(src)}})
    with pytest.raises(ParameterError, match="is the input model"):
        outs.add(src, "output")
    with pytest.raises(ParameterError, match="is its data"):
        outs.add(tmp_path / "m" / "w.bin", "--stats")
    outs.add(tmp_path / "m" / "a.onnx", "output", companions=(".data",))
    with pytest.raises(ParameterError, match="also the output path"):
        outs.add(tmp_path / "m" / "a.onnx.data", "--report")
    outs.discard()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.onnx", "w.bin"]

"""`python -m runtime`: bad input is refused up front with exit 2 and a message naming the flag or file."""

import pytest

from runtime.cli import main


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["generate", "--prompt-ids", "1,2", "--max-tokens", "-100"], "--max-tokens"),
        (["generate", "--prompt-ids", "1,2", "--max-tokens", "0"], "--max-tokens"),
        (["generate", "--prompt-ids", "1,2", "--budget", "0"], "--budget"),
        (["generate", "--prompt-ids", "1,2", "--budget", "-4"], "--budget"),
        (["generate", "--prompt-ids", "1,2", "--top-k", "-1"], "--top-k"),
        (["generate", "--prompt-ids", "1,2", "--top-p", "0"], "--top-p"),
        (["generate", "--prompt-ids", "1,2", "--top-p", "1.5"], "--top-p"),
        (["generate", "--prompt-ids", "1,2", "--temperature", "-0.5"], "--temperature"),
        (["generate", "--prompt-ids", "1,2", "--temperature", "nan"], "--temperature"),
        (["generate", "--prompt-ids", "1,2", "--seed", "-1"], "--seed"),
        (["workload", "decode-b1", "--steps", "-3"], "--steps"),
        (["workload", "decode-b1", "--steps", "0"], "--steps"),
        (["workload", "decode-b1", "--seed", "-1"], "--seed"),
        (["checkpoint", "--out", "x", "--shards", "-2"], "--shards"),
        (["checkpoint", "--out", "x", "--shards", "0"], "--shards"),
        (["checkpoint", "--out", "x", "--seed", "-1"], "--seed"),
        (["verify", "--checkpoint", "x", "--prompt-len", "0"], "--prompt-len"),
        (["verify", "--checkpoint", "x", "--chunk", "0"], "--chunk"),
        (["verify", "--checkpoint", "x", "--decode", "-1"], "--decode"),
        (["verify", "--checkpoint", "x", "--seed", "-1"], "--seed"),
    ],
)
def test_out_of_range_counts_are_refused_naming_the_flag(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even a relative --out
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.runtime
def test_workload_without_a_name_says_what_is_missing(capsys):
    pytest.importorskip("mindspore")
    assert main(["workload"]) == 2
    captured = capsys.readouterr()
    assert "decode-b1" in captured.out
    assert "error: workload: give a workload NAME (one of the above) or --list" in captured.err


def test_the_smallest_accepted_values_parse():
    from runtime.cli import build_parser

    a = build_parser().parse_args(
        ["generate", "--prompt-ids", "0", "--max-tokens", "1", "--budget", "1", "--top-p", "1", "--seed", "0"]
    )
    assert (a.max_tokens, a.budget, a.top_p, a.seed, a.temperature) == (1, 1, 1.0, 0, 0.0)
    assert build_parser().parse_args(["verify", "--checkpoint", "x", "--decode", "0"]).decode == 0


def test_scheduler_refuses_a_budget_that_schedules_nothing():
    pytest.importorskip("numpy")
    from runtime.errors import EngineError
    from runtime.scheduler import SchedulerConfig

    with pytest.raises(EngineError, match="max_num_batched_tokens must be >= 1, got 0"):
        SchedulerConfig(max_num_batched_tokens=0)
    with pytest.raises(EngineError, match="max_num_seqs must be >= 1"):
        SchedulerConfig(max_num_seqs=0)


# ----------------------------------------------------------------------------------- checkpoint --out


@pytest.fixture
def ckpt(tmp_path):
    pytest.importorskip("safetensors")
    out = tmp_path / "ck"
    assert main(["checkpoint", "--out", str(out), "--shards", "2"]) == 0
    return out


def test_checkpoint_over_an_existing_one_is_refused_without_force(ckpt, capsys):
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert main(["checkpoint", "--out", str(ckpt), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"error: {ckpt}: already holds a checkpoint" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_checkpoint_out_that_is_a_file_is_refused(tmp_path, capsys):
    pytest.importorskip("safetensors")
    out = tmp_path / "file"
    out.write_text("mine")
    assert main(["checkpoint", "--out", str(out)]) == 2
    assert f"error: {out}: exists and is not a directory" in capsys.readouterr().err
    assert out.read_text() == "mine"


def test_checkpoint_force_replaces_every_file_of_the_old_one(ckpt, capsys):
    assert main(["checkpoint", "--out", str(ckpt), "--seed", "1", "--force"]) == 0
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.runtime
@pytest.mark.parametrize("keep", ["header", "data"])
def test_truncated_safetensors_is_exit_2_naming_the_file(ckpt, capsys, keep):
    pytest.importorskip("mindspore")
    shard = ckpt / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    shard.write_bytes(data[: header - 7] if keep == "header" else data[: header + 64])
    capsys.readouterr()
    assert main(["verify", "--checkpoint", str(ckpt)]) == 2  # 1 would mean "logits outside tolerance"
    err = capsys.readouterr().err
    assert err.startswith(f"error: {shard}: not a readable safetensors file") and "truncated" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------- generate


@pytest.fixture
def gen(ckpt, monkeypatch, tmp_path):
    """Run `generate` on the checkpoint; loading the weights counts as work that should not have started."""
    pytest.importorskip("mindspore")
    from runtime import weights

    loads = []
    real = weights.load_weights

    def counting(*a, **k):
        loads.append(a)
        return real(*a, **k)

    monkeypatch.setattr(weights, "load_weights", counting)

    def run(*argv):
        return main(["generate", "--checkpoint", str(ckpt), *argv])

    run.loads = loads
    return run


@pytest.mark.runtime
def test_prompt_id_outside_the_vocabulary_is_refused_before_the_model_runs(gen, tmp_path, capsys, ckpt):
    out = tmp_path / "l.npy"
    capsys.readouterr()
    assert gen("--prompt-ids", "1,512", "--logits-out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"--prompt-ids: token id 512 is outside the vocabulary of {ckpt / 'config.json'} (vocab_size 512" in err
    assert not gen.loads and not out.exists()
    assert gen("--prompt-ids", "-1") == 2
    assert "--prompt-ids: token id -1" in capsys.readouterr().err
    assert gen("--prompt-ids", ",") == 2
    assert "--prompt-ids: no token ids given" in capsys.readouterr().err
    assert gen("--prompt-ids", "1", "--stop-ids", "9999") == 2
    assert "--stop-ids: token id 9999" in capsys.readouterr().err
    assert gen("--prompt-ids", "1", "--max-tokens", "100000") == 2
    assert "--max-tokens (100000) exceeds max_position_embeddings" in capsys.readouterr().err
    assert not gen.loads


@pytest.mark.runtime
def test_logits_out_into_a_missing_directory_is_refused_before_anything_runs(gen, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "l.npy"
    capsys.readouterr()
    assert gen("--prompt-ids", "1,2", "--logits-out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"--logits-out {out}: directory {out.parent} does not exist" in err
    assert not gen.loads
    assert gen("--prompt-ids", "1,2", "--logits-out", str(tmp_path)) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.runtime
def test_logits_out_is_never_overwritten_silently_and_is_written_at_the_path_given(gen, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "prompt.logits"  # no .npy suffix: np.save(path) would have written prompt.logits.npy
    out.write_bytes(b"keep me")
    assert gen("--prompt-ids", "1,2", "--max-tokens", "1", "--logits-out", str(out)) == 2
    assert "already exists; choose another path, or pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me" and not gen.loads
    assert gen("--prompt-ids", "1,2", "--max-tokens", "1", "--logits-out", str(out), "--force") == 0
    assert np.load(out).shape == (2, 512)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "prompt.logits"]

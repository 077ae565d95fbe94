"""``toy-flux``: a small Flux text-to-image model trained on scikit-learn's digits by flow matching.

Every component is the real diffusers / transformers class of the Flux family:
``FluxTransformer2DModel`` (double- and single-stream blocks, RoPE), ``FlowMatchEulerDiscreteScheduler``,
a ``CLIPTextModel`` + ``CLIPTokenizer`` (the pooled embedding) and a ``T5EncoderModel`` +
``T5Tokenizer`` (the token sequence), and an ``AutoencoderKL``. Only the transformer is trained
(``rfcache.models.train_toy_flux``); the text encoders keep fixed random weights (a prompt maps to
a fixed embedding the transformer learns to read) and the VAE is a fixed, hand-set identity.

The VAE (:func:`identity_vae`) has one level (no down-sampling), one latent channel and hand-set
weights: every residual branch is zero, and the convolutions around the closing GroupNorm carry the
signal as ``[x, -x, B, -B]`` (group mean exactly 0, variance dominated by the constant ``B``), so
normalising divides by a known constant; a shift ``S`` keeps the SiLU in its linear range.
``decode(encode(x))`` reproduces ``x`` to about 1e-6. The latent is therefore the 16x16 grey image
itself, standardised by the VAE's ``shift_factor`` / ``scaling_factor``; Flux's 2x2 packing makes it
64 tokens of 4 channels.

The saved folder (``toy_flux_weights/``) is a plain ``FluxPipeline`` that diffusers loads by itself.
:class:`ToyFluxPipeline` is that pipeline with the defaults this model was trained for: 16x16
pixels, 16 T5 tokens, and ``guidance_scale`` as true classifier-free guidance (the model was trained
with prompt dropout to the empty prompt and has no guidance embedding).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxPipeline

from rfcache.models.tiny import clip_text_encoder

__all__ = [
    "CALIBRATION_TEMPLATES",
    "DEFAULT_GUIDANCE",
    "DIGIT_WORDS",
    "PROMPT_TEMPLATES",
    "TEXT_TOKENS",
    "TOY_FLUX_TRANSFORMER_CONFIG",
    "TOY_FLUX_WEIGHTS_DIR",
    "ToyFluxPipeline",
    "build_toy_flux_pipeline",
    "digit_prompt",
    "digit_prompts",
    "identity_vae",
    "load_toy_flux_pipeline",
    "mixed_digit_prompts",
    "read_training_record",
]

TOY_FLUX_WEIGHTS_DIR = Path(__file__).with_name("toy_flux_weights")
SAMPLE_SIZE = 16  # pixels; the latent has the same size (the VAE does not down-sample)
TEXT_TOKENS = 16  # T5 sequence length (max_sequence_length) and CLIP context length
DEFAULT_GUIDANCE = 3.0  # true classifier-free guidance scale of the default call
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: prompt templates; ``{d}`` is the numeral, ``{w}`` the word
PROMPT_TEMPLATES = (
    "a handwritten {d}",
    "the digit {w}",
    "number {w}, written by hand",
    "a handwritten digit {d}",
    "the number {d}",
    "a {w}",
    "digit {d}",
    "an image of the digit {w}",
    "a scanned handwritten {w}",
    "{d}",
)

#: templates the calibration and selection inputs of ``rfc-calibrate --model toy-flux`` are drawn from;
#: its test inputs use the other templates (as ``rfc-bench --model toy-flux`` does)
CALIBRATION_TEMPLATES = (0, 1, 2, 3, 4)

TOY_FLUX_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4,  # 1 latent channel x 2x2 packing
    "num_layers": 2,  # double-stream blocks
    "num_single_layers": 4,
    "attention_head_dim": 32,
    "num_attention_heads": 4,  # hidden 128
    "joint_attention_dim": 64,  # T5 width
    "pooled_projection_dim": 64,  # CLIP width
    "guidance_embeds": False,  # trained with prompt dropout: true CFG, not FLUX.1-dev's embedded guidance
    "axes_dims_rope": (8, 12, 12),
}

_TEXT_WIDTH = 64
_VAE_B = 1000.0  # the constant channel that dominates the GroupNorm variance
_VAE_S = 20.0  # the shift that keeps SiLU linear (sigmoid(20) = 1 - 2e-9)
_WORDS = (
    *DIGIT_WORDS,
    *("a", "an", "the", "of", "by", "digit", "number", "handwritten", "written", "hand"),
    *("image", "scanned", "drawn", "picture", "photo"),
)


def digit_prompt(digit: int, template: int = 0) -> str:
    """The prompt of ``template`` (an index into :data:`PROMPT_TEMPLATES`) naming ``digit``."""
    return PROMPT_TEMPLATES[template].format(d=digit, w=DIGIT_WORDS[digit])


def digit_prompts(templates: range | list[int] | None = None) -> list[tuple[str, int]]:
    """Every (prompt, digit) pair of the given templates (all by default), template-major."""
    chosen = range(len(PROMPT_TEMPLATES)) if templates is None else templates
    return [(digit_prompt(d, t), d) for t in chosen for d in range(10)]


def mixed_digit_prompts(templates: tuple[int, ...] | list[int] | range) -> list[str]:
    """Every prompt of ``templates`` naming each digit, ordered so that any 10 in a row name the ten
    digits and, for ``len(templates)`` templates in a row, cycle through the templates: prompt ``j`` names
    digit ``j % 10`` in template ``templates[(j + j // 10) % len(templates)]``, so a short run mixes both."""
    chosen = list(templates)
    n = len(chosen) * 10
    return [digit_prompt(j % 10, chosen[(j + j // 10) % len(chosen)]) for j in range(n)]


# -- tokenizers and text encoders ---------------------------------------------------------------


def _t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer: whole words of the prompts, characters as the fallback."""
    import string

    from transformers import T5Tokenizer

    chars = ["▁", *(string.ascii_letters + string.digits + string.punctuation)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in _WORDS] + [(c, -8.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_tokenizer() -> Any:
    """A byte-level BPE CLIP tokenizer whose merges spell the prompts' words; other text goes by byte."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet)]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = [*word[:-1], word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
                tokens.append(left + right)
            left += right
    tokens = list(dict.fromkeys([*tokens, "<|startoftext|>", "<|endoftext|>"]))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_TOKENS)


def _t5_encoder(tokenizer: Any) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=_TEXT_WIDTH,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


# -- the identity VAE ---------------------------------------------------------------------------


def identity_vae(shift_factor: float = 0.0, scaling_factor: float = 1.0) -> AutoencoderKL:
    """A one-level, one-latent-channel ``AutoencoderKL`` whose hand-set weights make it the identity
    on grey images in [-1, 1] (to about 1e-6); see the module docstring for how."""
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        sample_size=SAMPLE_SIZE,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for module in vae.modules():
            if type(module).__name__ == "ResnetBlock2D":
                for norm in (module.norm1, module.norm2):
                    norm.weight.fill_(1.0)  # the residual branch is zero (conv2 = 0); keep the norms sane
        for coder, out_bias in ((vae.encoder, -30.0), (vae.decoder, None)):
            _carry_signal(coder.conv_in, coder.conv_norm_out, coder.conv_out, logvar_bias=out_bias)
    return vae.eval()


def _carry_signal(conv_in: Any, norm: Any, conv_out: Any, *, logvar_bias: float | None) -> None:
    """conv_in: x -> [x, -x, B, -B]; GroupNorm (one group): channel 0 -> x + S; conv_out: -> x (and a
    tiny log-variance where the encoder also predicts one)."""
    conv_in.weight[0, 0, 1, 1] = 1.0
    conv_in.weight[1, 0, 1, 1] = -1.0
    conv_in.bias.copy_(torch.tensor([0.0, 0.0, _VAE_B, -_VAE_B]))
    norm.weight.copy_(torch.tensor([_VAE_B / 2**0.5, 0.0, 0.0, 0.0]))  # std of the group is B / sqrt(2)
    norm.bias.copy_(torch.tensor([_VAE_S, 0.0, 0.0, 0.0]))
    conv_out.weight[0, 0, 1, 1] = 1.0
    conv_out.bias[0] = -_VAE_S
    if logvar_bias is not None:
        conv_out.bias[1] = logvar_bias  # DiagonalGaussianDistribution clamps log-variance at -30


# -- the pipeline -------------------------------------------------------------------------------


def build_toy_flux_pipeline(*, seed: int = 0, shift_factor: float = 0.0, scaling_factor: float = 1.0) -> FluxPipeline:
    """A plain ``FluxPipeline`` of the toy-flux components: a random transformer, text encoders from
    ``seed`` (the global RNG is left as it was) and the identity VAE with the given latent statistics."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip, t5 = _clip_tokenizer(), _t5_tokenizer()
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
            vae=identity_vae(shift_factor, scaling_factor),
            text_encoder=clip_text_encoder(clip, hidden=_TEXT_WIDTH, heads=4, max_length=TEXT_TOKENS),
            tokenizer=clip,
            text_encoder_2=_t5_encoder(t5),
            tokenizer_2=t5,
            transformer=FluxTransformer2DModel(**TOY_FLUX_TRANSFORMER_CONFIG),
        )
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _toy_signature() -> inspect.Signature:
    base = inspect.signature(FluxPipeline.__call__)
    defaults = {
        "height": SAMPLE_SIZE,
        "width": SAMPLE_SIZE,
        "max_sequence_length": TEXT_TOKENS,
        "guidance_scale": DEFAULT_GUIDANCE,
    }
    return base.replace(
        parameters=[p.replace(default=defaults[n]) if n in defaults else p for n, p in base.parameters.items()]
    )


_TOY_SIGNATURE = _toy_signature()


class ToyFluxPipeline(FluxPipeline):
    """``FluxPipeline`` with toy-flux's defaults: 16x16 pixels, 16 T5 tokens, and ``guidance_scale``
    (default 3) as true classifier-free guidance against the empty prompt.

    The transformer has no guidance embedding, so ``guidance_scale`` is handed on as
    ``true_cfg_scale`` with ``negative_prompt=""`` unless a negative prompt (or its embeddings) is
    given (one per prompt); an explicit ``true_cfg_scale`` other than 1 takes precedence. Scale 1 or less: one
    transformer call per step, no guidance.

    ``calibration_prompt_pools`` is what ``rfc-calibrate`` draws on without ``--prompts``: calibration
    and selection prompts from :data:`CALIBRATION_TEMPLATES`, test prompts from the other templates.
    """

    calibration_prompt_pools = (
        tuple(mixed_digit_prompts(CALIBRATION_TEMPLATES)),
        tuple(mixed_digit_prompts([t for t in range(len(PROMPT_TEMPLATES)) if t not in CALIBRATION_TEMPLATES])),
    )

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = _TOY_SIGNATURE.bind(self, *args, **kwargs)
        call.apply_defaults()
        values = {k: v for k, v in call.arguments.items() if k != "self"}
        scale = float(values["guidance_scale"])
        if values["true_cfg_scale"] == 1.0:
            values["true_cfg_scale"] = scale
        if values["true_cfg_scale"] > 1 and values["negative_prompt_embeds"] is None:
            values["negative_prompt"] = _per_prompt(values["negative_prompt"] or "", values["prompt"])
        return FluxPipeline.__call__(self, **values)


def _per_prompt(negative: str | list[str], prompt: str | list[str] | None) -> str | list[str]:
    """One negative prompt per prompt: FluxPipeline encodes a single negative prompt once, leaving the
    guidance branch's text embeddings at batch 1 against a larger image batch."""
    if isinstance(negative, str) and isinstance(prompt, list):
        return [negative] * len(prompt)
    return negative


ToyFluxPipeline.__call__.__signature__ = _TOY_SIGNATURE  # type: ignore[attr-defined]


def load_toy_flux_pipeline(
    weights_dir: Path = TOY_FLUX_WEIGHTS_DIR, *, dtype: torch.dtype = torch.float32
) -> ToyFluxPipeline:
    """The shipped (or a retrained) toy-flux pipeline from ``weights_dir``, offline, in eval mode,
    with diffusers' and transformers' loading progress bars off for the call."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = []
    for module in (diffusers_logging, transformers_logging):
        if module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restore.append(module)
    try:
        pipe = ToyFluxPipeline.from_pretrained(weights_dir, dtype=dtype, local_files_only=True)
    finally:
        for module in restore:
            module.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_training_record(weights_dir: Path = TOY_FLUX_WEIGHTS_DIR) -> dict[str, Any]:
    """The recipe and measurements recorded beside the shipped weights."""
    return json.loads((weights_dir / "training.json").read_text())

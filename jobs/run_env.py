"""The environment a run process gets: built from an allow-list, never a copy of the
worker's.

A run executes a config someone else submitted, so it sees only what it needs: the system
basics (``PATH``, ``HOME``, locale, temp folders, the Python and virtualenv paths), the
workspace (``MEMFACTORY_HOME``), offline and threading switches of the libraries it uses
(``HF_*``, ``TRANSFORMERS_*``, ``OMP_*``, ``CUDA_*``, ...), the API-key variables the
operator allowed (``MEMFACTORY_KEY_*`` and ``$MEMFACTORY_ALLOWED_KEY_ENVS``), the data
roots and denied files of :mod:`jobs.data_roots`, and what the scheduler adds for the run
itself (its database URL, attempt, heartbeat period, GPUs). The
workbench login (``MEMFACTORY_UI_AUTH``), the worker's own database URL and any other
variable are left out. Variables whose names look like credentials (``*TOKEN*``, ``*KEY*``,
``*SECRET*``, ``*PASSWORD*``, ...) are dropped even under an allowed prefix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from jobs.data_roots import DATA_ROOTS_ENV, DENIED_PATHS_ENV
from memfactory_core.config import (
    ALLOW_REMOTE_CODE_ENV,
    ALLOWED_KEY_ENVS_ENV,
    RESTRICTED_ENV,
    key_env_allowed,
)

#: passed on as they are
RUN_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
    "TMPDIR", "TMP", "TEMP", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NO_PROXY", "no_proxy",
    "MEMFACTORY_HOME", "MEMFACTORY_HEARTBEAT_S", "TOKENIZERS_PARALLELISM", "TQDM_DISABLE",
    "GRADIO_ANALYTICS_ENABLED", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY",
    "TENSORBOARD_LOGDIR", ALLOWED_KEY_ENVS_ENV, ALLOW_REMOTE_CODE_ENV, DATA_ROOTS_ENV,
    DENIED_PATHS_ENV,
})
#: passed on by prefix, unless the name looks like a credential
RUN_ENV_PREFIXES = ("LC_", "HF_", "TRANSFORMERS_", "HUGGINGFACE_HUB_", "OMP_", "MKL_",
                    "OPENBLAS_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "PYTORCH_", "XDG_",
                    "ACCELERATE_", "VLLM_")
_CREDENTIAL = re.compile(r"TOKEN|KEY|SECRET|PASS|AUTH|CREDENTIAL|COOKIE|SESSION",
                         re.IGNORECASE)


def passes(name: str) -> bool:
    """Whether variable ``name`` of the worker's environment reaches a run process."""
    if key_env_allowed(name):
        return True
    if name in RUN_ENV_NAMES:
        return True
    return name.startswith(RUN_ENV_PREFIXES) and not _CREDENTIAL.search(name)


def run_environment(extra: Mapping[str, str], source: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
    """The environment of a run process: the allowed part of ``source`` (default this
    process's environment), then ``extra`` (what the scheduler sets for the run), marked as a
    process that executes submitted configs."""
    base = os.environ if source is None else source
    env = {k: v for k, v in base.items() if passes(k)}
    env.update({k: str(v) for k, v in extra.items()})
    env[RESTRICTED_ENV] = "1"
    return env

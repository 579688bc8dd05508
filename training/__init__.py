"""training/: composes pipeline/ and selection/ into an Accelerate-driven distillation run.

config (typed YAML) · models (timm / tv/ torchvision) · losses (KD, mixed CE) · cost (FLOP counting, cost model,
ledger) · optim (SGD + schedule) · checkpoint (atomic save/resume) · evaluate (top-1/5) · trainer (the loop)
· recipes (teacher-if-missing, method comparison) · cost_report / bench / profile / timing (the measuring
commands).
"""

from .config import Config, ConfigError, load_config
from .models import ModelError, create_model

__all__ = ["Config", "ConfigError", "ModelError", "create_model", "load_config"]
